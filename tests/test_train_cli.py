"""`echo-ray train cpt|rad` and jobs/train_*.py: bad input ends as one line with exit code 2."""

from __future__ import annotations

from echo_ray.cli import main
from echo_ray.train.cli import job_main


def test_echo_ray_train_reports_bad_input(capsys, tmp_path):
    sets = [f"train.cpt.data={tmp_path / 'missing'}", f"train.cpt.output_dir={tmp_path}"]
    rc = main(["train", "cpt", "--set", sets[0], "--set", sets[1]])
    assert rc == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"echo-ray train: error: dataset not found: {tmp_path / 'missing'}"


def test_job_script_reports_bad_config(capsys, tmp_path):
    rc = job_main("rad", ["--set", "train.rad.max_steps=0", "--raw"])
    assert rc == 2
    assert capsys.readouterr().err.strip() == "train rad: error: 'train.rad.max_steps': input should be greater than 0, got 0"

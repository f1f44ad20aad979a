"""The echo-ray command line: subcommands, phantom/generate output, one-line errors on bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
import torch

from conftest import shared_path


def run_cli(*args: str, timeout: int = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "echo_ray.cli", *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_help_lists_subcommands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for cmd in ("phantom", "generate", "demo", "init"):
        assert cmd in out.stdout
    assert run_cli("generate", "--help").returncode == 0


def test_phantom_writes_studies(tmp_path) -> None:
    out = run_cli("phantom", "--out", str(tmp_path / "ph"), "--n", "8", "--seed", "0")
    assert out.returncode == 0, out.stderr
    assert "wrote 8 studies" in out.stdout and "SYNTHETIC" in out.stdout
    assert len(list((tmp_path / "ph" / "reports").glob("*.txt"))) == 8


def test_generate_prints_report_and_forward_passes(tiny_ckpt_dir, phantom_dir) -> None:
    img = next((phantom_dir / "images").glob("*_PA.png"))
    out = run_cli("generate", "--model", str(tiny_ckpt_dir), "--image", str(img), "--max-new-tokens", "16")
    assert out.returncode == 0, out.stderr
    assert "Findings:" in out.stdout and "Impression:" in out.stdout
    assert "forward passes" in out.stdout
    real = shared_path("cxr_images_nih", "00027426_000.png")
    out = run_cli("generate", "--model", str(tiny_ckpt_dir), "--image", str(real), "--mode", "ar",
                  "--max-new-tokens", "4", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert '"mode": "ar"' in out.stdout.splitlines()[-1]


def _one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode != 0
    lines = [ln for ln in out.stderr.strip().splitlines() if "error" in ln]
    assert lines and needle in lines[-1], out.stderr
    assert "Traceback" not in out.stderr


def test_bad_inputs_give_one_line_errors(tmp_path, tiny_ckpt_dir, phantom_dir) -> None:
    img = str(next((phantom_dir / "images").glob("*_PA.png")))
    _one_line_error(run_cli("generate", "--model", str(tmp_path / "nomodel"), "--image", img), "nomodel")
    pickled = tmp_path / "pickled"
    shutil.copytree(tiny_ckpt_dir, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({}, pickled / "pytorch_model.bin")
    _one_line_error(run_cli("generate", "--model", str(pickled), "--image", img), "pytorch_model.bin")
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(open(img, "rb").read()[:50])
    _one_line_error(run_cli("generate", "--model", str(tiny_ckpt_dir), "--image", str(corrupt)), "corrupt.png")
    text = tmp_path / "report.txt"
    text.write_text("hello")
    _one_line_error(run_cli("generate", "--model", str(tiny_ckpt_dir), "--image", str(text)), "report.txt")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("decode:\n  modee: onestep\n")
    _one_line_error(run_cli("generate", "--model", str(tiny_ckpt_dir), "--image", img, "--config", str(bad_cfg)), "decode.modee")


@pytest.mark.parametrize("n", ["0", "-3"])
def test_phantom_rejects_bad_count(tmp_path, n) -> None:
    _one_line_error(run_cli("phantom", "--out", str(tmp_path), "--n", n), "--n must be positive")

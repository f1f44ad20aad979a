"""`echo-ray train cpt|rad`: run a training stage on the local (or RAY_ADDRESS) Ray cluster.

The config tree is loaded once here (`--config`, `--set key=value`, `--raw`) and only the stage's
resolved plan travels to the workers. `jobs/train_cpt.py` and `jobs/train_rad.py` are the same
command for `ray job submit`.

Usage:
    echo-ray train cpt --config configs/tiny.yaml --set train.cpt.data=data_out/normalized
    echo-ray train rad --config configs/tiny.yaml --raw
"""

from __future__ import annotations

import argparse

from echo_ray.config.args import add_config_args, config_from_args
from echo_ray.storage import shown_path

TRAIN_STAGES = ("cpt", "rad")


def add_stage_args(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--raw", action="store_true", help="train on raw_findings/raw_impression (normalization ablation)")


def add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a stage (cpt: autoregressive, rad: block diffusion) with Ray Train")
    stages = p.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {"cpt": "stage 1: AR next-token loss on the response", "rad": "stage 2: response-asymmetric diffusion"}
    for name in TRAIN_STAGES:
        add_stage_args(stages.add_parser(name, help=helps[name]))
    p.set_defaults(func=run_train)
    from echo_ray.train.dcd.cli import add_dcd_parser

    add_dcd_parser(stages)  # stage 3 has its own flags and runner (echo_ray/train/dcd/cli.py)


def run_train(args: argparse.Namespace) -> int:
    from echo_ray.train.launcher import launch

    if args.raw:
        args.set = [*(args.set or []), f"train.{args.stage}.raw=true"]
    outcome = launch(config_from_args(args), args.stage)
    loss = outcome.metrics.get("loss")
    print(f"{args.stage}: final model at {shown_path(outcome.final_dir)}" + (f" (last loss {loss:.4f})" if loss is not None else ""))
    return 0


def job_main(stage: str, argv: list[str] | None = None) -> int:
    """Entry point of jobs/train_<stage>.py: same flags, errors as one line and exit code 2."""
    import logging
    import sys

    from echo_ray.errors import EchoError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(prog=f"train_{stage}.py", description=f"Ray job: train stage '{stage}'")
    add_stage_args(p)
    args = p.parse_args(argv)
    args.stage = stage
    try:
        return run_train(args)
    except EchoError as e:
        print(f"train {stage}: error: {e}", file=sys.stderr)
        return 2

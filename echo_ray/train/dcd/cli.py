"""`echo-ray train dcd` and `jobs/train_dcd.py`: run Stage 3 from the config, with a few shortcuts.

Flags override the config: --teacher (train.dcd_teacher.teacher), --data (train.dcd.data),
--output-dir (train.dcd.output_dir), --replay-from (train.dcd_teacher.replay_from),
--on-policy-student (train.dcd_teacher.on_policy_student); anything else
with --set KEY=VALUE. Prints the per-round one-step agreement, the rounds whose agreement dropped
more than `train.dcd.agreement_drop_warn` below the best so far, and the final model's path with
where it came from (the last step, or the best round under `train.dcd.keep_best`); bad input ends
with one line on stderr and exit code 2 (echo_ray.cli).

Usage:
    echo-ray train dcd --config configs/tiny.yaml --teacher runs/rad/final --data data_out/normalized
    ray job submit --working-dir . -- python jobs/train_dcd.py --config configs/lingshu7b.yaml
"""

from __future__ import annotations

import argparse
import json

from echo_ray.config.args import add_config_args, config_from_args
from echo_ray.storage import shown_path
from echo_ray.train.dcd.best import LAST_STEP, warning_text

FLAG_KEYS = {
    "teacher": "train.dcd_teacher.teacher",
    "data": "train.dcd.data",
    "output_dir": "train.dcd.output_dir",
    "replay_from": "train.dcd_teacher.replay_from",
    "on_policy_student": "train.dcd_teacher.on_policy_student",
}


def add_dcd_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)
    p.add_argument("--teacher", help="ECHO_Base checkpoint (the RAD stage's final model), local or s3://")
    p.add_argument("--data", help="normalized dataset (manifest.json + dcd/*.parquet)")
    p.add_argument("--output-dir", help="where checkpoints, trajectories, metrics and final/ go")
    p.add_argument("--replay-from", help="train on stored trajectories (<dir>/round-*/part-*.parquet); no teacher runs")
    p.add_argument("--on-policy-student", help="on-policy DCD: the teacher labels this student's one-step reports "
                   "(usually the previous DCD run's final model, also set as train.dcd.init_from)")
    p.add_argument("--json", action="store_true", help="print the run summary as one JSON line")
    p.set_defaults(func=run_dcd_command)


def add_dcd_parser(sub) -> None:
    """Register `dcd` on an `echo-ray train` subparser group."""
    add_dcd_arguments(sub.add_parser("dcd", help="stage 3: distill the multi-step teacher into a one-step student"))


def run_dcd_command(args: argparse.Namespace) -> int:
    from echo_ray.train.dcd.driver import run_dcd

    sets = list(getattr(args, "set", []) or [])
    for attr, key in FLAG_KEYS.items():
        value = getattr(args, attr, None)
        if value:
            sets.append(f"{key}={json.dumps(value)}")
    args.set = sets
    outcome = run_dcd(config_from_args(args))
    s = outcome.summary
    if args.json:
        print(json.dumps({"final_dir": outcome.train.final_dir, **{k: v for k, v in s.items() if k != "rounds"},
                          "agreement": {r["round"]: r.get("agreement") for r in s["rounds"]}}))  # fmt: skip
        return 0
    for r in s["rounds"]:
        label = "before" if r["round"] < 0 else f"round {r['round']}"
        print(f"[dcd] {label}: one-step agreement {r.get('agreement', float('nan')):.4f}")
    for line in outcome_lines(s, outcome.train.final_dir):
        print(line)
    return 0


def outcome_lines(s: dict, final_dir: str) -> list[str]:
    """The end of the text report: drop warnings, idle fraction, and which model ended as final."""
    lines = [f"[dcd] warning: {warning_text(w)}" for w in s.get("warnings", [])]
    if s.get("keep_best_unavailable"):
        lines.append(f"[dcd] warning: {s['keep_best_unavailable']}; keep_best could not work")
    source = s.get("final_from", LAST_STEP)
    if source != LAST_STEP:
        before = " (the student before training)" if s.get("best_round") == -1 else ""
        source = (f"{source}{before}, agreement {s['best_agreement']:.4f} vs the last step's "
                  f"{s['final_agreement']:.4f}; last-step model: {shown_path(s['last_dir'])}")  # fmt: skip
    lines.append(f"[dcd] trainer idle fraction {s['trainer_idle_fraction']:.3f}; "
                 f"final model: {shown_path(final_dir)} (from {source})")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    """Standalone entry (jobs/train_dcd.py): the same flags as `echo-ray train dcd`."""
    import logging
    import os
    import sys

    from echo_ray.errors import EchoError

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    parser = argparse.ArgumentParser(prog="train_dcd", description="Stage 3 (DCD) as a Ray job")
    add_dcd_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run_dcd_command(args)
    except EchoError as e:
        print(f"train_dcd: error: {e}", file=sys.stderr)
        return 2

"""`echo-ray`: one command line for every stage on one machine (local Ray).

Subcommands register themselves from their own modules (`add_*_parser(subparsers)` functions that
set `func`), so this file only lists them. Bad input ends with one line on stderr and exit code 2;
anything else is a bug and keeps its traceback.

Usage:
    echo-ray --help
    echo-ray phantom --out phantom/ --n 8 --seed 0
    echo-ray generate --model runs/tiny --image phantom/images/x_PA.png --mode onestep
    echo-ray demo
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from echo_ray.errors import EchoError

# (module, function) pairs; each function adds one subcommand with `func` set.
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("echo_ray.commands", "add_phantom_parser"),
    ("echo_ray.commands", "add_generate_parser"),
    ("echo_ray.commands", "add_init_parser"),
    ("echo_ray.commands", "add_import_parser"),
    ("echo_ray.demo", "add_demo_parser"),
    ("echo_ray.eval.cli", "add_eval_parser"),
    ("echo_ray.data.pipeline.cli", "add_normalize_parser"),
    ("echo_ray.serve.cli", "add_serve_parser"),
    ("echo_ray.train.cli", "add_train_parser"),
    ("echo_ray.interop.cli", "add_pacs_parser"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="echo-ray",
        description="ECHO chest X-ray report generation (one forward per block) on Ray.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module, fn in SUBCOMMANDS:
        getattr(importlib.import_module(module), fn)(sub)
    return parser


def _quiet_transformers() -> None:
    """Weight-loading progress bars are noise in a CLI that loads tiny models many times."""
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _quiet_transformers()
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EchoError as e:
        print(f"echo-ray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"echo-ray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

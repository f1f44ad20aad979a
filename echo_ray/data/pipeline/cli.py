"""`echo-ray normalize` (and jobs/normalize.py): command-line front end of the normalization job.

Flags override the `normalize` section of `--config`; `--source NAME=PATH` (repeatable) replaces
the configured sources. Prints the manifest summary; exit 0 when the run finished (quarantined
records are reported, not fatal), 2 with a one-line message for bad input (unknown source, missing
path, bad config).

Usage:
    echo-ray normalize --source iu_xray=/data/iu_xray_kaggle --source phantom=phantom/ \\
        --output out/normalized --engine rules
    python jobs/normalize.py --config configs/tiny.yaml
"""

from __future__ import annotations

import argparse
import logging
import sys

from echo_ray.config import NormalizeConfig, SourceSpec
from echo_ray.config.args import add_config_args
from echo_ray.config.args import config_from_args as load_tree
from echo_ray.config.paths import resolve_stage_path
from echo_ray.errors import ConfigError
from echo_ray.storage import shown_path


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_args(p)  # --config (its `normalize` and `storage` sections are the base) and --set
    p.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                   help="input corpus (mimic_cxr, chexpert_plus, rexgradient, iu_xray, phantom); repeatable")  # fmt: skip
    p.add_argument("--output", default=None, help="output directory or s3:// prefix")
    p.add_argument("--engine", default=None, choices=["rules", "transformers", "vllm"])
    p.add_argument("--model-path", default=None, help="model for the transformers / vllm engine")
    p.add_argument("--num-actors", type=int, default=None, help="engine actors (and embedding actors)")
    p.add_argument("--shard-rows", type=int, default=None)
    p.add_argument("--no-image-check", action="store_true",
                   help="keep studies whose image files are not present on this machine")  # fmt: skip


def add_normalize_parser(subparsers) -> argparse.ArgumentParser:
    """Register `normalize` on an argparse subparsers object; sets func=run_normalize."""
    p = subparsers.add_parser("normalize", help="normalize report corpora into training Parquet (Ray Data)")
    add_arguments(p)
    p.set_defaults(func=run_normalize)
    return p


def parse_source(text: str) -> SourceSpec:
    name, sep, path = text.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ConfigError(f"--source must be NAME=PATH, got {text!r}")
    return SourceSpec(name=name.strip(), path=path.strip())


def config_from_args(args: argparse.Namespace) -> NormalizeConfig:
    tree = load_tree(args)  # relative paths resolved against storage.root (or refused under a Ray job)
    cfg, root = tree.normalize, tree.storage.root
    if args.source:
        cfg.sources = [parse_source(s) for s in args.source]
        for s in cfg.sources:
            s.path = resolve_stage_path(s.path, root, f"--source {s.name}")
    if args.output:
        cfg.output = resolve_stage_path(args.output, root, "--output")
    if args.engine:
        cfg.engine.kind = args.engine
    if args.model_path:
        cfg.engine.model_path = args.model_path
    if args.num_actors:
        cfg.engine.num_actors = cfg.dedup.num_actors = args.num_actors
    if args.shard_rows:
        cfg.shard_rows = args.shard_rows
    if args.no_image_check:
        for s in cfg.sources:
            s.require_images = False
    return cfg


def _logging() -> None:
    log = logging.getLogger("echo_ray.normalize")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[normalize] %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


def run_normalize(args: argparse.Namespace) -> int:
    """Run the job from parsed args; returns the exit code."""
    from echo_ray.data.pipeline.driver import run_pipeline
    from echo_ray.data.pipeline.manifest import summary_text

    _logging()
    cfg = config_from_args(args)
    manifest = run_pipeline(cfg)  # EchoError: one line and exit 2 (echo_ray.cli)
    print(summary_text(manifest))
    out = shown_path(cfg.output)
    print(f"normalized data: {out} (manifest: {out}/manifest.json)")
    return 0


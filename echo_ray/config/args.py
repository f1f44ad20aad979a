"""The command-line side of the config tree: `--config` / `--set` / `--preset` for every subcommand.

Each entry point (echo-ray subcommands, jobs/*.py, the normalization CLI) loads the tree once here:
the YAML, then `--set KEY=VALUE` overrides (values in YAML syntax, validated with the tree), then
the stage paths resolved against `storage.root` (echo_ray.config.paths).

Usage:
    add_config_args(parser); add_preset_arg(parser)
    cfg = config_from_args(parser.parse_args())
"""

from __future__ import annotations

import argparse

import yaml

from echo_ray.config import PRESETS, EchoConfig, load_config
from echo_ray.config.paths import resolve_stage_paths
from echo_ray.errors import ConfigError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config (default: the built-in defaults: the tiny model at smoke-test "
                   "scale, short stages, the same DCD recipe as configs/tiny.yaml, which sets the demo's scale)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.rad.max_steps=5 (YAML value syntax)")  # fmt: skip


def add_preset_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="decode.preset: echo-reference = the published ECHO inference settings")  # fmt: skip


def config_from_args(args: argparse.Namespace) -> EchoConfig:
    """Load the config tree once at the entry point, with --set overrides (and --preset); stage paths resolved.

    With `storage.root` set, or under a Ray job, relative data/output paths become absolute against
    the root (a relative path with no root under a Ray job is a ConfigError; echo_ray.config.paths).
    """
    overrides = {}
    for item in getattr(args, "set", []) or []:
        if "=" not in item:
            raise ConfigError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        overrides[k.strip()] = yaml.safe_load(v)
    if getattr(args, "preset", None):
        overrides["decode.preset"] = args.preset
    return resolve_stage_paths(load_config(getattr(args, "config", None), overrides))

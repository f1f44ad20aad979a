"""`echo-ray demo`: the whole method end to end on the embedded default (phantom corpus, tiny model).

SYNTHETIC images and a tiny randomly initialized model: the numbers show that the system runs and
how the methods compare relative to each other, not clinical quality.

Usage:
    echo-ray demo [--out demo_out] [--n 240] [--config configs/tiny.yaml]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from echo_ray.commands import add_config_args, config_from_args
from echo_ray.config import save_config


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run everything end to end on the phantom corpus and a tiny model")
    p.add_argument("--out", default="demo_out", help="output folder (tables, plot, checkpoints)")
    p.add_argument("--n", type=int, default=None, help="phantom studies (default: phantom.n from the config)")
    add_config_args(p)
    p.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from echo_ray.data.images import load_image
    from echo_ray.data.phantom import SYNTHETIC_NOTE, read_phantom, write_phantom
    from echo_ray.decode.generator import ReportGenerator
    from echo_ray.model.checkpoint import load_checkpoint
    from echo_ray.model.tiny import build_tiny_checkpoint

    cfg = config_from_args(args)
    out = Path(args.out)
    save_config(cfg, out)
    print(f"[demo] {SYNTHETIC_NOTE}")
    n = args.n or cfg.phantom.n
    write_phantom(out / "phantom", n, cfg.phantom.seed, cfg.phantom.image_size)
    print(f"[demo] phantom corpus: {n} studies in {out / 'phantom'}")
    ckpt_dir = build_tiny_checkpoint(out / "tiny_init", cfg.model.tiny, cfg.model.block_size)
    print(f"[demo] tiny model (random weights) in {ckpt_dir}")
    study = read_phantom(out / "phantom")[0]
    gen = ReportGenerator(load_checkpoint(str(ckpt_dir)), cfg.decode, cfg.prompt)
    rep = gen.generate([[load_image(im["path"]) for im in study["images"]]], "en")[0]
    print(f"[demo] study {study['study_id']} ({rep.mode}, block {rep.block_size}, {rep.forward_passes} forwards):")
    print(f"  text: {rep.text!r}")
    return 0

"""Foundation subcommands of `echo-ray`: phantom, init (tiny checkpoint), import-checkpoint, generate.

Usage:
    echo-ray phantom --out phantom/ --n 8 --seed 0
    echo-ray init --out runs/tiny_init --block-size 8
    echo-ray import-checkpoint ~/models/ECHO_block8 --out runs/echo_block8
    echo-ray generate --model runs/tiny_init --image phantom/images/phantom-000-000000_PA.png
    echo-ray generate --model ~/models/ECHO_block8 --preset echo-reference --image cxr.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from echo_ray.config import DecodeConfig, ModelConfig, save_config
from echo_ray.config.args import add_config_args, add_preset_arg, config_from_args


def add_phantom_parser(sub) -> None:
    p = sub.add_parser("phantom", help="write the synthetic phantom corpus (images, raw reports, labels)")
    p.add_argument("--out", required=True, help="output directory (relative: under storage.root when set)")
    p.add_argument("--n", type=int, default=None, help="number of studies (default: phantom.n, or 16 without --config)")
    p.add_argument("--seed", type=int, default=None, help="default: phantom.seed")
    p.add_argument("--image-size", type=int, default=None, help="default: phantom.image_size")
    add_config_args(p)
    p.set_defaults(func=run_phantom)


def run_phantom(args: argparse.Namespace) -> int:
    from echo_ray.config.paths import resolve_stage_path
    from echo_ray.data.phantom import SYNTHETIC_NOTE, write_phantom
    from echo_ray.errors import InputError

    cfg = config_from_args(args)
    n = args.n if args.n is not None else (cfg.phantom.n if args.config or args.set else 16)
    seed = args.seed if args.seed is not None else cfg.phantom.seed
    size = args.image_size if args.image_size is not None else cfg.phantom.image_size
    if n <= 0:
        raise InputError(f"--n must be positive, got {n}")
    out = resolve_stage_path(args.out, cfg.storage.root, "--out")
    index = write_phantom(out, n, seed, size)
    n_img = len(list(Path(out, "images").glob("*.png")))
    print(f"wrote {n} studies ({n_img} images) to {out}; index {index}")
    print(SYNTHETIC_NOTE)
    return 0


def add_init_parser(sub) -> None:
    p = sub.add_parser("init", help="build the randomly initialized tiny checkpoint (no download)")
    p.add_argument("--out", required=True)
    p.add_argument("--block-size", type=int, default=None, help="default: model.block_size from the config")
    add_config_args(p)
    p.set_defaults(func=run_init)


def run_init(args: argparse.Namespace) -> int:
    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.model.tiny import build_tiny_checkpoint

    cfg = config_from_args(args)
    block_size = args.block_size or cfg.model.block_size
    out = build_tiny_checkpoint(args.out, cfg.model.tiny, block_size, tokenizer_corpus())
    save_config(cfg, out)
    print(f"tiny checkpoint written to {out}")
    return 0


def add_import_parser(sub) -> None:
    p = sub.add_parser("import-checkpoint", help="convert a published ECHO checkpoint into echo_ray's layout")
    p.add_argument("src", help="checkpoint directory or s3://bucket/prefix (published or echo_ray layout)")
    p.add_argument("--out", required=True, help="output directory or s3:// prefix")
    p.add_argument("--block-size", type=int, default=None, help="default: recorded, else the _block4/_block8 name")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="bfloat16")
    p.add_argument("--cache-dir", default="~/.cache/echo_ray/models", help="where s3:// sources are mirrored")
    p.set_defaults(func=run_import)


def run_import(args: argparse.Namespace) -> int:
    from echo_ray.model.importer import import_checkpoint

    out = import_checkpoint(args.src, args.out, args.block_size, ModelConfig(dtype=args.dtype, cache_dir=args.cache_dir))
    print(f"imported {args.src} -> {out}")
    return 0


def add_generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="write a report for one study's images")
    p.add_argument("--model", required=True, help="checkpoint directory or s3://bucket/prefix")
    p.add_argument("--image", action="append", required=True, help="image file (PNG/JPEG/DICOM); repeat for up to 4")
    p.add_argument("--mode", choices=["ar", "multistep", "onestep"], default=None)
    p.add_argument("--block-size", type=int, default=None, help="default: the checkpoint's trained block size")
    p.add_argument("--override-block-size", action="store_true", help="allow a block size the model was not trained with")
    p.add_argument("--steps", type=int, default=None, help="multistep: steps per block (default B)")
    p.add_argument("--threshold", type=float, default=None, help="multistep: dynamic confidence threshold tau")
    p.add_argument("--cache", choices=["fused", "vanilla", "none"], default=None)
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--language", choices=["en", "zh"], default=None)
    p.add_argument("--schedule", choices=["confidence", "quota"], default=None, help="multistep commit schedule")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument("--format", choices=["json", "dicom-sr", "fhir"], default=None,
                   help="write the report as echo_ray JSON, a DICOM SR or a FHIR DiagnosticReport (with --out)")  # fmt: skip
    p.add_argument("--out", default=None, help="file for --format (json/fhir: stdout when omitted)")
    add_preset_arg(p)
    add_config_args(p)
    p.set_defaults(func=run_generate)


def decode_config_from_args(base: DecodeConfig, args: argparse.Namespace) -> DecodeConfig:
    from dataclasses import replace

    fields = {"mode": args.mode, "block_size": args.block_size, "steps": args.steps, "threshold": args.threshold,
              "cache": args.cache, "max_new_tokens": args.max_new_tokens, "language": args.language,
              "schedule": getattr(args, "schedule", None)}  # fmt: skip
    return replace(base, **{k: v for k, v in fields.items() if v is not None})


def run_generate(args: argparse.Namespace) -> int:
    from echo_ray.data.images import read_image
    from echo_ray.decode.generator import ReportGenerator
    from echo_ray.model.checkpoint import load_checkpoint

    cfg = config_from_args(args)
    images = [read_image(p) for p in args.image]  # errors name the file before the model loads
    dec = decode_config_from_args(cfg.decode, args)
    ckpt = load_checkpoint(args.model, cfg.model)
    gen = ReportGenerator(ckpt, dec, cfg.prompt, override_block=args.override_block_size)
    report = gen.generate([images], dec.language)[0]
    if args.format:
        from echo_ray.interop.cli import write_generated

        return write_generated(report, args, gen.cfg)
    if args.json:
        print(json.dumps({k: v for k, v in report.as_dict().items() if k != "tokens"} | {"n_tokens": len(report.tokens)}))
        return 0
    print(f"Findings: {report.findings}")
    print(f"Impression: {report.impression}")
    print(
        f"[{report.mode}, block {report.block_size}] {len(report.tokens)} tokens in {report.forward_passes} forward "
        f"passes (prefill {report.prefill_s * 1000:.0f} ms, decode {report.decode_s * 1000:.0f} ms)"
    )
    return 0

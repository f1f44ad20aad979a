"""`echo-ray eval`: score checkpoints on a normalized split and write the table, plot and details.

Rows: every `--model` crossed with every `--mode` and `--block-size` given (AR rows take no block
size, so each model gets one AR row); without `--model` the rows come from the config
(`eval.rows`, else `eval.model` with the `decode` section). Flags override the config's `eval`
and `decode` values; the resolved config is saved beside the outputs.

Usage:
    echo-ray eval --model runs/dcd/final --data data_out/normalized --split eval --out eval_out
    echo-ray eval --model runs/cpt/final --mode ar --model runs/rad/final --mode multistep --mode onestep \
        --data data_out/normalized --language en --meteor
    echo-ray eval --config configs/lingshu7b.yaml          # rows and data from the config
    echo-ray eval --model ~/models/ECHO_block8 --preset echo-reference \
        --data ECHO/eval/CXRTest_demo/jsons --language zh    # the published test-set JSONs
"""

from __future__ import annotations

import argparse
from dataclasses import replace

from echo_ray.config import EchoConfig, EvalRow
from echo_ray.config.args import add_config_args, add_preset_arg, config_from_args
from echo_ray.errors import InputError
from echo_ray.storage import shown_path


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="evaluate checkpoints on a normalized split (table, JSON, trade-off plot)")
    p.add_argument("--model", action="append", default=[], help="checkpoint dir or s3://; repeat for more rows")
    p.add_argument("--mode", action="append", choices=["ar", "multistep", "onestep"], default=[],
                   help="decoder; repeat for more rows (default: decode.mode)")  # fmt: skip
    p.add_argument("--block-size", action="append", type=int, default=[],
                   help="block size; repeat for more rows (default: each checkpoint's own)")  # fmt: skip
    p.add_argument("--override-block-size", action="store_true",
                   help="allow block sizes the model was not trained with")  # fmt: skip
    p.add_argument("--name", action="append", default=[], help="row label, one per row in order (default: derived)")
    p.add_argument("--data", help="normalized dataset directory or s3:// prefix, or a published test-set "
                   "JSON file / folder of them (default: eval.data)")  # fmt: skip
    p.add_argument("--split", help="split to evaluate (default: eval.split)")
    p.add_argument("--language", choices=["en", "zh"], help="language evaluated (default: eval.language)")
    p.add_argument("--out", help="output folder (default: eval.output_dir)")
    p.add_argument("--max-reports", type=int, help="studies to decode (default: eval.max_reports)")
    p.add_argument("--batch-size", type=int, help="studies per decoding batch (default: eval.batch_size)")
    p.add_argument("--max-new-tokens", type=int, help="decode.max_new_tokens")
    p.add_argument("--steps", type=int, help="multistep: steps per block (default B)")
    p.add_argument("--threshold", type=float, help="multistep: dynamic confidence threshold tau")
    p.add_argument("--cache", choices=["fused", "vanilla", "none"], help="decode.cache")
    p.add_argument("--meteor", action="store_true", help="also score METEOR (needs Java; 15-25 s per row)")
    p.add_argument("--num-actors", type=int, help="decode on a Ray Data pool of this many actors (0 = in process)")
    p.add_argument("--schedule", choices=["confidence", "quota"], help="decode.schedule (multistep)")
    add_preset_arg(p)
    add_config_args(p)
    p.set_defaults(func=run_eval)


def rows_from_args(args: argparse.Namespace) -> list[EvalRow]:
    """The cross product of --model x --mode x --block-size (one AR row per model), named by --name."""
    rows: list[EvalRow] = []
    for model in args.model:
        for mode in args.mode or [None]:
            sizes = [None] if mode == "ar" or not args.block_size else args.block_size
            rows += [EvalRow(model=model, mode=mode, block_size=b, override_block=args.override_block_size)
                     for b in sizes]  # fmt: skip
    if args.name:
        if len(args.name) != len(rows):
            raise InputError(f"{len(args.name)} --name value(s) for {len(rows)} row(s); give one per row or none")
        rows = [replace(r, name=n) for r, n in zip(rows, args.name)]
    return rows


def apply_args(cfg: EchoConfig, args: argparse.Namespace) -> EchoConfig:
    """The config with the command line's rows and overrides applied."""
    if not args.model and (args.mode or args.block_size or args.name):
        raise InputError("--mode, --block-size and --name describe rows of --model; pass --model too")
    ev = {"data": args.data, "split": args.split, "language": args.language, "output_dir": args.out,
          "max_reports": args.max_reports, "batch_size": args.batch_size, "num_actors": args.num_actors}  # fmt: skip
    eval_cfg = replace(cfg.eval, **{k: v for k, v in ev.items() if v is not None})
    if args.meteor:
        eval_cfg = replace(eval_cfg, meteor=True)
    if args.model:
        eval_cfg = replace(eval_cfg, rows=rows_from_args(args))
    dec = {"max_new_tokens": args.max_new_tokens, "steps": args.steps, "threshold": args.threshold, "cache": args.cache,
           "schedule": getattr(args, "schedule", None)}  # fmt: skip
    decode = replace(cfg.decode, **{k: v for k, v in dec.items() if v is not None})
    return replace(cfg, eval=eval_cfg, decode=decode)


def run_eval(args: argparse.Namespace) -> int:
    from echo_ray.eval.evaluate import evaluate_config

    cfg = apply_args(config_from_args(args), args)
    paths = evaluate_config(cfg)
    print(paths["markdown"].read_text(encoding="utf-8"))
    print("wrote " + ", ".join(shown_path(paths[k]) for k in ("markdown", "json", "plot", "details")))
    return 0

"""`echo-ray demo`: the whole method end to end on the embedded default (phantom corpus, tiny model).

phantom corpus -> normalize (rules engine, Ray Data) -> CPT -> RAD -> DCD (Ray Train + DeepSpeed,
teacher actor pool) -> evaluate, then one table with ECHO_AR (AR), ECHO_Base multi-step (S = B),
ECHO_Base one-step (no DCD) and ECHO one-step (DCD). Everything is evaluated on the held-out split
against its normalized references.

With `--ablation`, a second table repeats Base vs ECHO trained on raw vs normalized reports (the
paper's normalization ablation; the raw arm reuses the normalized CPT model and retrains stages 2-3
on raw report text, for the first block size only). It is off by default: it takes about a quarter
of the demo's time, and normalized beat raw on every seed measured (docs/method.md,
"Normalization ablation").

SYNTHETIC images and a tiny model trained for minutes on 2 CPU cores: the numbers show how the
decoders and stages compare with each other, not clinical quality.

Usage:
    echo-ray demo [--out demo_out] [--n 240] [--block-sizes 8] [--ablation]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

from echo_ray.config import EchoConfig, EvalRow, SourceSpec, save_config
from echo_ray.config.args import add_config_args, config_from_args

TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def add_demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="run everything end to end on the phantom corpus and a tiny model")
    p.add_argument("--out", default="demo_out", help="output folder (tables, plot, checkpoints)")
    p.add_argument("--n", type=int, default=None, help="phantom studies (default: phantom.n from the config)")
    p.add_argument("--block-sizes", default=None, help="comma list, e.g. 4,8 (default: model.block_size)")
    p.add_argument("--ablation", action="store_true",
                   help="also train the raw-report arm and write the raw-vs-normalized ablation.* table")  # fmt: skip
    add_config_args(p)
    p.set_defaults(func=run_demo)
    p.epilog = "Without --config the demo uses configs/tiny.yaml (the embedded default)."


def _say(msg: str) -> None:
    print(f"[demo {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def demo_arms(ablation: bool, block_index: int) -> list[tuple[str, bool]]:
    """The training arms for one block size, as (folder tag, train on raw text): the normalized arm
    always; the raw arm only with `--ablation` and only for the first block size (one ablation table)."""
    arms = [("", False)]
    if ablation and block_index == 0:
        arms.append(("_raw", True))
    return arms


def stage_config(cfg: EchoConfig, out: Path, data: str, init: str, tag: str, raw: bool, block: int) -> EchoConfig:
    """Point every stage of `cfg` at this demo run's folders (one arm: normalized or raw)."""
    t = cfg.train
    cpt = replace(t.cpt, data=data, init_from=init, output_dir=str(out / "cpt"))
    rad = replace(t.rad, data=data, init_from=str(out / "cpt" / "final"), output_dir=str(out / f"rad{tag}"), raw=raw)
    dcd = replace(t.dcd, data=data, init_from=str(out / f"rad{tag}" / "final"), output_dir=str(out / f"dcd{tag}"), raw=raw)
    teacher = replace(t.dcd_teacher, teacher=str(out / f"rad{tag}" / "final"))
    train = replace(t, cpt=cpt, rad=rad, dcd=dcd, dcd_teacher=teacher)
    return replace(cfg, train=train, model=replace(cfg.model, block_size=block))


def train_stage(cfg: EchoConfig, stage: str) -> str:
    t0 = time.perf_counter()
    if stage == "dcd":
        from echo_ray.train.dcd.driver import run_dcd

        out = run_dcd(cfg).train
    else:
        from echo_ray.train.launcher import launch

        out = launch(cfg, stage)
    m = out.metrics
    gap = f", image gap {m['image_gap']:+.3f}" if "image_gap" in m else ""
    _say(f"{stage}: done in {time.perf_counter() - t0:.0f} s, loss {m.get('loss', float('nan')):.3f}{gap} -> {out.final_dir}")
    return out.final_dir


def prepare_data(cfg: EchoConfig, out: Path, n: int) -> str:
    from echo_ray.data.phantom import SYNTHETIC_NOTE, write_phantom
    from echo_ray.data.pipeline.driver import run_pipeline
    from echo_ray.data.pipeline.manifest import summary_text

    _say(SYNTHETIC_NOTE)
    write_phantom(out / "phantom", n, cfg.phantom.seed, cfg.phantom.image_size)
    _say(f"phantom corpus: {n} studies in {out / 'phantom'}")
    norm = replace(cfg.normalize, sources=[SourceSpec("phantom", str(out / "phantom"))], output=str(out / "normalized"))
    manifest = run_pipeline(norm)
    _say(f"normalized (rules engine) -> {norm.output}: {summary_text(manifest).splitlines()[0]}")
    return norm.output


def run_demo(args: argparse.Namespace) -> int:
    import ray

    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.eval.evaluate import get_encoder, merge_runs, renamed_rows, run_evaluation, write_evaluation
    from echo_ray.model.tiny import build_tiny_checkpoint

    t_start = time.perf_counter()
    if args.config is None and TINY_PRESET.is_file():
        args.config = str(TINY_PRESET)  # the embedded default
    cfg = config_from_args(args)
    out = Path(args.out)
    save_config(cfg, out)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    data = prepare_data(cfg, out, args.n or cfg.phantom.n)
    blocks = [int(b) for b in (args.block_sizes or str(cfg.model.block_size)).split(",")]
    encoder = get_encoder(cfg.eval.semscore_encoder)
    main_rows, raw_rows, reuse = [], [], {}
    for i, B in enumerate(blocks):
        init = str(build_tiny_checkpoint(out / f"tiny_init_B{B}", cfg.model.tiny, B, tokenizer_corpus()))
        for tag, raw in demo_arms(args.ablation, i):
            scfg = stage_config(cfg, out / f"B{B}", data, init, tag, raw, B)
            stages = ("cpt", "rad", "dcd") if not tag else ("rad", "dcd")
            finals = {s: train_stage(scfg, s) for s in stages}
            if not tag:
                main_rows += [
                    EvalRow(name=f"ECHO_AR (AR) B={B}", model=finals["cpt"], mode="ar"),
                    EvalRow(name=f"ECHO_Base multi-step S={B} B={B}", model=finals["rad"], mode="multistep", block_size=B, steps=B),
                    EvalRow(name=f"ECHO_Base one-step (no DCD) B={B}", model=finals["rad"], mode="onestep", block_size=B),
                    EvalRow(name=f"ECHO one-step (DCD) B={B}", model=finals["dcd"], mode="onestep", block_size=B),
                ]
            label = "raw" if raw else "normalized"
            arm = [EvalRow(name=f"Base one-step, {label} B={B}", model=finals["rad"], mode="onestep", block_size=B),
                   EvalRow(name=f"ECHO one-step, {label} B={B}", model=finals["dcd"], mode="onestep", block_size=B)]
            if tag:
                raw_rows += arm
            else:  # the normalized arm's rows are the main table's last two: decoded once, renamed for the ablation
                reuse.update({m.name: a.name for m, a in zip(main_rows[-2:], arm)})
    _say("evaluating on the held-out split")
    run = run_evaluation(main_rows, data, cfg.eval.split, cfg.eval, cfg.decode, cfg.prompt, cfg.model, encoder)
    note = " (synthetic phantom, tiny model)"
    paths = write_evaluation(run, out, title="ECHO reproduction" + note, cfg=cfg)
    if raw_rows:
        abl = run_evaluation(raw_rows, data, cfg.eval.split, cfg.eval, cfg.decode, cfg.prompt, cfg.model, encoder)
        abl = merge_runs(renamed_rows(run, reuse), abl)
        write_evaluation(abl, out, title="Normalization ablation" + note, cfg=cfg, name="ablation")
    print(Path(paths["markdown"]).read_text(encoding="utf-8"))
    if raw_rows:  # not an ablation.md an earlier --ablation run left in the same folder
        print((out / "ablation.md").read_text(encoding="utf-8"))
    _say(f"finished in {time.perf_counter() - t_start:.0f} s; tables and plot in {out}")
    return 0

"""Benchmark: how much of the one-step gap DCD closes (issue 6, "Figures").

On held-out eval prompts (the dataset's `eval` split, never seen by RAD or DCD), three decoders:
  base_onestep       ECHO_Base (the teacher) decoded one step per block, no DCD
  echo_onestep       ECHO after DCD, one step per block (fused KV cache)
  teacher_multistep  ECHO_Base, S steps per block (the target DCD distills)
For each: `agreement` (position-wise token match with the teacher's multi-step output, EOS
included; echo_ray.train.dcd.agreement), `exact` (identical reports), `rouge_l` to the references
(echo_ray.eval.linguistic), and `repeat_rate` (adjacent repeated tokens, the one-step failure mode).
`gap_recovered` = (echo - base) / (teacher - base) on agreement (`gap_recovered_rouge_l` on ROUGE-L);
`trainer_idle_fraction` is the DCD trainers' time blocked on the teacher queue.

Default: the tiny preset on a phantom corpus. Without --teacher the teacher is built here the pipeline's
way: CPT for --cpt-steps from the random tiny checkpoint, then RAD for --rad-steps with the vision tower
frozen (in this process; --rad-via-ray runs the RAD Ray Train job from the random model instead); with
--teacher DIR an existing ECHO_Base is used (and --data its dataset, with `eval` and `dcd` splits).
`distinct` (the share of distinct reports) is the teacher's quality check: a teacher that writes one
report for every study leaves DCD nothing to distil. `--seed` seeds the corpus, the teacher and DCD.

The DCD recipe is the config tree's defaults (the one configs/tiny.yaml and the demo use); `--lr`,
`--epochs` and `--set KEY=VALUE` override single settings. `max_drop_below_best_after_round_1` is the
largest fall of held-out agreement below its running best from round 1 on.

Usage:
    python benchmarks/dcd.py --json --seed 1
    python benchmarks/dcd.py --teacher runs/rad/final --data data_out/normalized --rounds 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")
    p.add_argument("--out", default="", help="work directory (default: a new temporary one)")
    p.add_argument("--teacher", default="", help="existing ECHO_Base checkpoint (skips the RAD run)")
    p.add_argument("--data", default="", help="normalized dataset with eval and dcd splits (default: phantom)")
    p.add_argument("--phantom-n", type=int, default=1600, help="phantom studies (the demo's 1,600)")
    p.add_argument("--raw-corpus", action="store_true",
                   help="raw phantom reports (several wordings per finding) instead of the normalized corpus")  # fmt: skip
    p.add_argument("--cpt-steps", type=int, default=1000, help="teacher: CPT steps of 8 rows from the random tiny model")
    p.add_argument("--cpt-lr", type=float, default=1e-3)
    p.add_argument("--rad-steps", type=int, default=800, help="teacher: then RAD steps of 8 rows, vision frozen")
    p.add_argument("--rad-lr", type=float, default=1e-3)
    p.add_argument("--rad-via-ray", action="store_true", help="build the teacher with the RAD Ray Train job (slower)")
    p.add_argument("--seed", type=int, default=0, help="seeds the phantom corpus, the teacher's RAD run and DCD")
    p.add_argument("--rounds", type=int, default=None, help="default: train.dcd_teacher.rounds")
    p.add_argument("--prompts-per-round", type=int, default=None, help="default: train.dcd_teacher.prompts_per_round")
    p.add_argument("--heldout", type=int, default=48, help="DCD held-out prompts for per-round agreement (48: one "
                   "report that flips moves it by ~0.02, well inside the 0.05 drop warning)")
    p.add_argument("--num-teachers", type=int, default=1)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--eval-n", type=int, default=64)
    # The DCD recipe is the config tree's (train.dcd, train.dcd_teacher: the defaults, which configs/tiny.yaml
    # and the demo share); these flags override single settings of it for an experiment.
    p.add_argument("--lr", type=float, default=None, help="DCD learning rate (default: train.dcd.optim.lr)")
    p.add_argument("--epochs", type=int, default=None, help="passes over the rounds (default: train.dcd_teacher.epochs)")
    p.add_argument("--steps", type=int, default=None, help="teacher steps per block (default: block size)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any other config override, e.g. --set train.dcd.loss.target_temperature=1.0")  # fmt: skip
    args = p.parse_args(argv)
    from echo_ray.config import load_config

    recipe_rounds = load_config(None, parse_sets(args.set)).train.dcd_teacher  # the config tree's scale unless flagged
    args.rounds = args.rounds or recipe_rounds.rounds
    args.prompts_per_round = args.prompts_per_round or recipe_rounds.prompts_per_round
    return args


def build_data(args, work: Path) -> str:
    """The corpus the demo trains on: phantom studies normalized by the rules engine (configs/tiny.yaml's
    `normalize` settings; the dcd split is part of the RAD training set, as in the paper), or with
    --raw-corpus the raw phantom reports split directly (eval, dcd, train disjoint)."""
    from dataclasses import replace

    from echo_ray.config import SourceSpec, load_config
    from echo_ray.data.phantom import write_phantom
    from echo_ray.data.phantom_dataset import write_phantom_dataset
    from echo_ray.data.pipeline.driver import run_pipeline

    if args.data:
        return args.data
    corpus = work / "phantom"
    write_phantom(corpus, args.phantom_n, seed=args.seed)
    if args.raw_corpus:
        dcd_rows = args.heldout + args.rounds * args.prompts_per_round + 16  # + spares
        return str(write_phantom_dataset(corpus, work / "data", eval_rows=args.eval_n, dcd_rows=dcd_rows))
    norm = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").normalize
    norm = replace(norm, sources=[SourceSpec("phantom", str(corpus))], output=str(work / "normalized"),
                   splits=replace(norm.splits, seed=args.seed))  # fmt: skip
    run_pipeline(norm)
    return norm.output


def train_in_process(stage, model, parts, rows: list[dict], steps: int, lr: float, seed: int, tag: str) -> None:
    """`steps` AdamW steps of 8 rows with `stage`'s batches and loss (the code the Ray Train job runs), warm-up
    then cosine decay to 10 %. On a ~500-row corpus the Ray Train job spends most of its time starting
    workers and re-reading the split through Ray Data; the stage math is the same."""
    import math
    import random

    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    warm = 20
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, s / steps)))))
    gen, rng = torch.Generator().manual_seed(seed), random.Random(seed)
    for step in range(steps):
        loss, _ = stage.loss(model, stage.build_batch(rng.sample(rows, min(8, len(rows))), parts, gen))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"[bench {tag}] step {step + 1}/{steps} loss {float(loss.detach()):.3f}", file=sys.stderr, flush=True)


def teacher_in_process(args, data: str, work: Path) -> str:
    """ECHO_Base the pipeline's way, in this process: CPT (AR on the response) from the random tiny model,
    then RAD from it with the vision tower frozen (configs/tiny.yaml: RAD at this lr overwrote the image
    pathway CPT learned). A RAD-only teacher from the random model often ignored the image and wrote one
    or two reports for every study (seed 1: 2 distinct teacher reports on 64 eval studies), which leaves
    DCD nothing to distil."""
    import pyarrow.dataset as pads
    import torch

    from echo_ray.config import NoiseConfig, PromptConfig, TinyModelConfig
    from echo_ray.data.phantom import tokenizer_corpus
    from echo_ray.model.checkpoint import load_checkpoint, save_checkpoint, write_echo_meta
    from echo_ray.model.tiny import build_tiny_checkpoint
    from echo_ray.train.cpt import CptStage
    from echo_ray.train.examples import Limits, PromptCache
    from echo_ray.train.rad import RadStage
    from echo_ray.train.stage import ModelParts

    torch.manual_seed(args.seed)
    init = build_tiny_checkpoint(work / "init", TinyModelConfig(), block_size=8, corpus=tokenizer_corpus())
    ckpt = load_checkpoint(str(init))
    rows = pads.dataset(str(Path(data) / "train"), format="parquet").to_table().to_pylist()
    parts = ModelParts(ckpt.model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, 8, PromptConfig())
    model, limits, cache = ckpt.model.train(), Limits(2048, 256), PromptCache(1024)
    if args.cpt_steps:
        train_in_process(CptStage(limits, cache), model, parts, rows, args.cpt_steps, args.cpt_lr, args.seed, "cpt")
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    train_in_process(RadStage(limits, NoiseConfig(t_min=0.3, t_max=1.0), cache), model, parts, rows, args.rad_steps,
                     args.rad_lr, args.seed + 1, "rad")  # fmt: skip
    write_echo_meta(model.config, ckpt.mask_id, 8)
    return str(save_checkpoint(model.eval(), ckpt.tokenizer, ckpt.image_processor, work / "teacher"))


def build_teacher(args, data: str, work: Path) -> tuple[str, float]:
    """An ECHO_Base: the given one, CPT + RAD in-process (default), or the RAD Ray Train job (from random)."""
    t0 = time.perf_counter()
    if args.teacher:
        return args.teacher, 0.0
    if not args.rad_via_ray:
        return teacher_in_process(args, data, work), time.perf_counter() - t0
    from echo_ray.config import load_config
    from echo_ray.train.launcher import launch

    cfg = load_config(None, {
        "train.rad.data": data, "train.rad.output_dir": str(work / "rad"), "train.rad.max_steps": args.rad_steps,
        "train.rad.batch_size": 8, "train.rad.checkpoint_every": args.rad_steps, "train.rad.optim.lr": args.rad_lr,
        "train.distributed.num_workers": 1, "train.distributed.backend": "ddp", "train.rad.seed": args.seed,
    })  # fmt: skip
    return launch(cfg, "rad").final_dir, time.perf_counter() - t0


def dcd_overrides(args, teacher: str, data: str, work: Path) -> dict:
    """This run's config overrides: its data, scale and seed; recipe settings only where a flag gives them."""
    overrides = {
        "train.dcd_teacher.teacher": teacher, "train.dcd_teacher.num_teachers": args.num_teachers,
        "train.dcd_teacher.rounds": args.rounds, "train.dcd_teacher.prompts_per_round": args.prompts_per_round,
        "train.dcd_teacher.heldout_prompts": args.heldout, "train.dcd_teacher.teacher_steps": args.steps,
        "train.dcd_teacher.max_new_tokens": args.max_new_tokens, "train.dcd.seed": args.seed,
        "train.dcd.data": data, "train.dcd.split": "dcd", "train.dcd.output_dir": str(work / "dcd"),
        "train.dcd.max_response_tokens": max(256, args.max_new_tokens + 16),
        "train.distributed.num_workers": args.workers, "train.distributed.backend": "ddp",
    }  # fmt: skip
    if args.lr is not None:
        overrides["train.dcd.optim.lr"] = args.lr
    if args.epochs is not None:
        overrides["train.dcd_teacher.epochs"] = args.epochs
    return overrides | parse_sets(args.set)


def run_distillation(args, teacher: str, data: str, work: Path):
    from echo_ray.config import load_config
    from echo_ray.train.dcd.driver import run_dcd

    cfg = load_config(None, dcd_overrides(args, teacher, data, work))
    t0 = time.perf_counter()
    return run_dcd(cfg), time.perf_counter() - t0, cfg


def recipe(cfg) -> dict:
    """The DCD settings this run trained with (the config tree's, after the flags)."""
    from echo_ray.config import to_dict

    d, t = cfg.train.dcd, cfg.train.dcd_teacher
    return {"loss": to_dict(d.loss), "optim": to_dict(d.optim), "batch_size": d.batch_size, "epochs": t.epochs,
            "top_k": t.top_k, "teacher_steps": t.teacher_steps, "teacher_batch_size": t.teacher_batch_size,
            "queue_size": t.queue_size, "keep_best": d.keep_best, "ema_decay": d.ema_decay}


def max_drop(by_round: dict[int, float | None], after: int = 1) -> float | None:
    """Largest fall of held-out agreement below its running best, over the rounds from `after` on."""
    best, worst = float("-inf"), None
    for r in sorted(by_round):
        a = by_round[r]
        if a is None:
            continue
        if r >= after and best > float("-inf"):
            worst = max(worst or 0.0, best - a)
        best = max(best, a)
    return worst


def parse_sets(items: list[str]) -> dict:
    """--set KEY=VALUE pairs (YAML values), as the CLI's config overrides."""
    import yaml

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k.strip()] = yaml.safe_load(v)
    return out


def eval_rows(data: str, n: int) -> list[dict]:
    import pyarrow.dataset as pads

    rows = pads.dataset(str(Path(data) / "eval"), format="parquet").to_table().to_pylist()[:n]
    if not rows:
        raise SystemExit(f"no eval rows in {data}/eval")
    return rows


def decode(path: str, rows: list[dict], mode: str, steps: int | None, max_new: int) -> tuple[list[list[int]], list[str]]:
    """Tokens (EOS appended when the decoder stopped on it) and texts for every eval row."""
    from echo_ray.config import DecodeConfig, PromptConfig
    from echo_ray.decode.generator import ReportGenerator
    from echo_ray.model.checkpoint import load_checkpoint
    from echo_ray.data.images import read_image

    ckpt = load_checkpoint(path)
    gen = ReportGenerator(ckpt, DecodeConfig(mode=mode, steps=steps, cache="fused", max_new_tokens=max_new), PromptConfig())
    toks, texts = [], []
    for i in range(0, len(rows), 8):
        studies = [[read_image(im["path"]) for im in r["images"]] for r in rows[i : i + 8]]
        for rep in gen.generate(studies, "en"):
            toks.append(rep.tokens + ([] if rep.hit_max_length else [ckpt.eos_id]))
            texts.append(rep.text)
    return toks, texts


def repeat_rate(seqs: list[list[int]]) -> float:
    pairs = sum(max(0, len(s) - 1) for s in seqs)
    return sum(sum(1 for a, b in zip(s, s[1:]) if a == b) for s in seqs) / max(1, pairs)


def score(seqs, texts, teacher_seqs, refs) -> dict:
    from echo_ray.eval.linguistic import linguistic_scores
    from echo_ray.train.dcd.agreement import token_agreement

    return {
        "agreement": token_agreement(seqs, teacher_seqs),
        "exact": sum(s == t for s, t in zip(seqs, teacher_seqs)) / len(seqs),
        "rouge_l": linguistic_scores(texts, refs, "en", meteor=False)["rouge_l"],
        "repeat_rate": repeat_rate(seqs),
        "mean_tokens": sum(len(s) for s in seqs) / len(seqs),
        "distinct": len(set(texts)) / len(texts),
    }


def gap(a: float, b: float, c: float) -> float | None:
    return None if abs(c - a) < 1e-9 else (b - a) / (c - a)


def main(argv=None) -> int:
    args = parse_args(argv)
    import ray

    work = Path(args.out or tempfile.mkdtemp(prefix="echo_dcd_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=max(4, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False)
    data = build_data(args, work)
    teacher, teacher_s = build_teacher(args, data, work)
    outcome, dcd_s, cfg = run_distillation(args, teacher, data, work)
    rows = eval_rows(data, args.eval_n)
    refs = [r["report"] for r in rows]
    t_seqs, t_texts = decode(teacher, rows, "multistep", args.steps, args.max_new_tokens)
    b_seqs, b_texts = decode(teacher, rows, "onestep", None, args.max_new_tokens)
    e_seqs, e_texts = decode(outcome.train.final_dir, rows, "onestep", None, args.max_new_tokens)
    res = {
        "base_onestep": score(b_seqs, b_texts, t_seqs, refs),
        "echo_onestep": score(e_seqs, e_texts, t_seqs, refs),
        "teacher_multistep": score(t_seqs, t_texts, t_seqs, refs),
    }
    s = outcome.summary
    by_round = {r["round"]: r.get("agreement") for r in s["rounds"]}
    out = {
        **res,
        "gap_recovered": gap(*(res[k]["agreement"] for k in ("base_onestep", "echo_onestep", "teacher_multistep"))),
        "gap_recovered_rouge_l": gap(*(res[k]["rouge_l"] for k in ("base_onestep", "echo_onestep", "teacher_multistep"))),
        "trainer_idle_fraction": s["trainer_idle_fraction"],
        "trainer_idle_fraction_steady": s["rounds"][-1].get("idle_fraction_steady"),
        "heldout_agreement_by_round": by_round,
        "max_drop_below_best_after_round_1": max_drop(by_round),
        "final_from": s.get("final_from"),
        "warnings": s.get("warnings", []),
        "teacher_records_per_s": [t["teacher_records_per_s"] for t in outcome.teacher_rounds],
        "dcd_steps": s["steps"],
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "out")} | {"eval_rows": len(rows)},
        "recipe": recipe(cfg),
        "seconds": {"teacher": teacher_s, "dcd": dcd_s},
        "examples": {"teacher": t_texts[0][:200], "base_onestep": b_texts[0][:200], "echo_onestep": e_texts[0][:200]},
        "work_dir": str(work),
    }
    if not args.json:
        for k in ("base_onestep", "echo_onestep", "teacher_multistep"):
            print(f"{k:18s} agreement {res[k]['agreement']:.3f}  rouge_l {res[k]['rouge_l']:.3f}  repeats {res[k]['repeat_rate']:.3f}")
        print(f"gap recovered {out['gap_recovered']}; trainer idle {out['trainer_idle_fraction']:.3f}")
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())

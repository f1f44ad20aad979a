"""One optimizer step of each training stage (CPT, RAD, DCD) on the tiny preset, without Ray Train.

The accelerator check's training part (benchmarks/gpu_check.sh). It drives the training loop's own
pieces in one process: `echo_ray.train.loop.load_parts` (the checkpoint as a worker loads it),
`echo_ray.train.job.build_stage` (CptStage, RadStage, DcdStage), `StageModule` and
`echo_ray.train.backends.make_engine`, then `build_batch` -> `train_step` once per stage. DCD's rows
are trajectory records that the DCD `TeacherWorker` decodes in-process (the static-slot engine,
multi-step with top-K recording) from the same checkpoint, as a teacher actor would.

Backends: `torch` is `DDPEngine` without a process group, i.e. plain AdamW on one device with bf16
autocast on a GPU (fp32 on the CPU); `deepspeed` is `DeepSpeedEngine` (ZeRO stage from the preset,
bf16 weights on a GPU) on a one-process group this script opens. Each stage checks that the loss
and gradient norm are finite and that the step changed the weights.

Usage:
    python benchmarks/train_step.py                       # torch backend, every stage
    python benchmarks/train_step.py --backend deepspeed --stages cpt,rad
"""

from __future__ import annotations

import argparse
import json
import math
import os
import socket
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from echo_ray.config import EchoConfig, load_config  # noqa: E402
from echo_ray.model.checkpoint import resolve_device  # noqa: E402
from echo_ray.train.stage import StageModule  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
STAGES = ("cpt", "rad", "dcd")


def make_inputs(cfg: EchoConfig, tmp: Path, n_studies: int) -> tuple[str, Path]:
    """A tiny checkpoint (the preset's shape and block size) and a phantom corpus under `tmp`."""
    from echo_ray.data.phantom import tokenizer_corpus, write_phantom
    from echo_ray.model.tiny import build_tiny_checkpoint

    m = cfg.model
    ckpt = build_tiny_checkpoint(tmp / "ckpt", m.tiny, block_size=m.block_size, corpus=tokenizer_corpus())
    write_phantom(tmp / "phantom", n_studies, seed=0)
    return str(ckpt), tmp / "phantom"


def teacher_job(cfg: EchoConfig, ckpt: str, corpus: Path, n: int, device: str) -> tuple:
    """(TeacherSpec, the first `n` phantom studies as PromptTasks): the preset's teacher settings, 32 new tokens."""
    from echo_ray.data.phantom import read_phantom
    from echo_ray.train.dcd.teacher import TeacherSpec
    from echo_ray.train.dcd.trajectory import PromptTask

    t = cfg.train.dcd_teacher
    spec = TeacherSpec(ckpt, t.teacher_steps, t.top_k, min(t.max_new_tokens, 32), model=cfg.model, prompt=cfg.prompt,
                       device=device, batch_size=n)  # fmt: skip
    tasks = [PromptTask(f"check{i}", r["study_id"], "en", r["images"], r["report"]) for i, r in
             enumerate(read_phantom(corpus)[:n])]  # fmt: skip
    return spec, tasks


def teacher_records(cfg: EchoConfig, ckpt: str, corpus: Path, n: int, device: torch.device) -> list:
    """`n` trajectory records decoded in-process by the DCD teacher worker (no Ray actor)."""
    from echo_ray.train.dcd.teacher import TeacherWorker

    spec, tasks = teacher_job(cfg, ckpt, corpus, n, str(device))
    result = TeacherWorker(spec, name="check-teacher").decode(tasks, round_index=0)
    if result.failures or len(result.records) != n:
        raise RuntimeError(f"the teacher returned {len(result.records)} of {n} records; failures: {result.failures}")
    return result.records


def stage_job(cfg: EchoConfig, stage: str, ckpt: str, backend: str, device: torch.device, out: Path):
    from echo_ray.train.job import StageJob

    gpu = device.type == "cuda"
    s = replace(getattr(cfg.train, stage), max_steps=1, grad_accum=1, output_dir=str(out / stage), image_gap_every=0)
    d = replace(cfg.train.distributed, num_workers=1, use_gpu=gpu, bf16=gpu, backend=backend)
    return StageJob(stage=stage, cfg=s, dist=d, prompt=cfg.prompt, model_path=ckpt, model=cfg.model)


def one_step(job, rows: list, device: torch.device) -> dict:
    """Load, build one batch of `rows`, take one optimizer step; figures and checks of that step."""
    from echo_ray.train.backends import make_engine
    from echo_ray.train.job import build_stage
    from echo_ray.train.loop import load_parts

    t0 = time.perf_counter()
    parts = load_parts(job, device)
    stage = build_stage(job)
    engine = make_engine(job.dist.backend, StageModule(parts.model, stage), job.dist, job.cfg.optim, 1, len(rows), 1,
                         device)  # fmt: skip
    probe = next(p for p in parts.model.parameters() if p.requires_grad)
    before = probe.detach().float().clone()
    batch = stage.build_batch(rows, parts, torch.Generator().manual_seed(0)).to(device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t1 = time.perf_counter()
    stats = engine.train_step([batch])
    if device.type == "cuda":
        torch.cuda.synchronize()
    out = {
        "backend": type(engine).__name__, "loss": stats.loss, "grad_norm": stats.grad_norm,
        "weight_dtype": str(probe.dtype).removeprefix("torch."), "rows": batch.n_rows, "tokens": batch.n_tokens,
        "step_s": time.perf_counter() - t1, "load_and_build_s": t1 - t0,
        "finite": math.isfinite(stats.loss) and math.isfinite(stats.grad_norm),
        "weights_changed": not torch.equal(before, probe.detach().float()),
        "metrics": {k: float(v) for k, v in stats.metrics.items()},
    }  # fmt: skip
    if device.type == "cuda":
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
    del engine, parts, batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return out


def open_group(device: torch.device) -> None:
    """A one-process torch.distributed group (DeepSpeed needs one; Ray Train would open it)."""
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", LOCAL_RANK="0", WORLD_SIZE="1")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def run(stages: list[str], backend: str, n_rows: int, config: str) -> dict:
    device = resolve_device("auto")
    torch.manual_seed(0)
    cfg = load_config(config)
    if backend == "deepspeed":
        open_group(device)
    gpu = device.type == "cuda"
    out: dict = {"device": torch.cuda.get_device_name() if gpu else "cpu", "requested_backend": backend,
                 "precision": ("bf16 weights" if backend == "deepspeed" else "bf16 autocast") if gpu else "fp32",
                 "stages": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="echo_train_step_") as d:
        tmp = Path(d)
        ckpt, corpus = make_inputs(cfg, tmp, max(n_rows, 4))
        from echo_ray.data.phantom_dataset import phantom_rows

        rows = phantom_rows(corpus)[:n_rows]
        for stage in stages:
            job = stage_job(cfg, stage, ckpt, backend, device, tmp / "runs")
            t0 = time.perf_counter()
            stage_rows = teacher_records(cfg, ckpt, corpus, n_rows, device) if stage == "dcd" else rows
            teacher_s = time.perf_counter() - t0
            r = one_step(job, stage_rows, device)
            if stage == "dcd":
                r["teacher_s"] = teacher_s  # load the teacher + decode its trajectories
            out["stages"][stage] = r
            print(f"[train_step] {stage}: loss {r['loss']:.4f} grad norm {r['grad_norm']:.3f} "
                  f"({r['backend']}, {r['weight_dtype']}) in {r['step_s']:.2f} s", file=sys.stderr)  # fmt: skip
    out["ok"] = all(r["finite"] and r["weights_changed"] for r in out["stages"].values())
    out["imported"] = sorted(m for m in ("ray", "deepspeed") if m in sys.modules)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", default=",".join(STAGES), help="comma-separated subset of cpt,rad,dcd")
    ap.add_argument("--backend", choices=["torch", "deepspeed"], default="torch")
    ap.add_argument("--rows", type=int, default=2, help="rows in the one micro-batch of each stage")
    ap.add_argument("--config", default=str(TINY), help="the preset YAML (model, prompt and stage settings)")
    args = ap.parse_args()
    stages = args.stages.split(",")
    unknown = sorted(set(stages) - set(STAGES))
    if unknown:
        ap.error(f"unknown stage(s) {unknown}; expected a subset of {list(STAGES)}")
    out = run(stages, "ddp" if args.backend == "torch" else "deepspeed", args.rows, args.config)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

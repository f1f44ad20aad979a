"""The one training loop every stage runs on each Ray Train worker.

Per optimizer step: take `grad_accum` micro-batches of rows from the worker's data shard, let the
stage build them (images read and processed here, in the worker, once per study through the
stage's echo_ray.train.examples.PromptCache; noise from a generator seeded by (seed, step, rank,
micro-batch), so a resumed step re-draws the same noise), run the engine step,
average the loss over ranks; rank 0 writes loss, tokens/s, lr and grad norm to TensorBoard,
metrics.jsonl and a progress line every step, and every rank passes them to `ray.train.report`
every `train.distributed.report_every` steps (a report is a barrier that waits for the controller's
poll, so reporting every step would pace training at the poll period). Every
`image_gap_every` steps and at the last step the image-conditioning gap of the stage's loss joins
those metrics (echo_ray.train.image_gap; its history in `<output_dir>/image_gap.json`). Every
`checkpoint_every` steps and at the last step, every rank writes its part of a checkpoint and
reports it. A restarted worker group (FailureConfig) restores the latest checkpoint: weights,
optimizer, scheduler, step counter and data position.

Rows come from the typed `RowSource` in the config (echo_ray.train.rows): the stage's Ray Data
shard for CPT and RAD, the teacher stream for DCD, whose callbacks run the end-of-round evaluation.

Usage (Ray Train calls it; see echo_ray.train.launcher):
    TorchTrainer(train_func, train_loop_config={"job": job, "rows": DatasetRows()}, ...)
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.distributed as dist

from echo_ray.model.checkpoint import load_checkpoint, write_echo_meta
from echo_ray.train.backends import StepStats, TrainEngine, make_engine, resolve_backend
from echo_ray.train.checkpointing import TrainState, restore_checkpoint, write_checkpoint
from echo_ray.train.data import DataPosition
from echo_ray.train.image_gap import ImageGapProbe
from echo_ray.train.job import FaultSpec, StageJob, build_stage
from echo_ray.train.metrics import MetricsLogger, worker_line
from echo_ray.train.rows import RowSource, RowStream
from echo_ray.train.stage import Batch, ModelParts, Stage, StageModule


def load_parts(job: StageJob, device: torch.device) -> ModelParts:
    """Load the init checkpoint on this worker and prepare it for training."""
    bf16_weights = job.dist.bf16 and device.type == "cuda" and resolve_backend(job.dist.backend) == "deepspeed"
    # Trained weights stay float32 (AMP) except under DeepSpeed bf16; model.dtype is the inference precision.
    model_cfg = replace(job.model, dtype="bfloat16" if bf16_weights else "float32")
    # RAD starts from an AR model: the one place where a MASK token is added (CPT needs none).
    ckpt = load_checkpoint(job.model_path, model_cfg, add_mask_token=job.stage == "rad")
    if ckpt.mask_id is None and job.stage != "cpt":
        from echo_ray.errors import InputError
        from echo_ray.model.published import missing_mask_message

        raise InputError(missing_mask_message(job.model_path))
    model = ckpt.model
    write_echo_meta(model.config, ckpt.mask_id, job.model.block_size)
    if job.cfg.freeze_vision:
        for p in model.model.visual.parameters():
            p.requires_grad_(False)
    if job.dist.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    return ModelParts(model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, job.model.block_size, job.prompt)


def noise_seed(seed: int, step: int, rank: int, micro: int) -> int:
    return (seed * 1_000_003 + step * 10_007 + rank * 101 + micro) % (2**63)


def maybe_fault(fault: FaultSpec | None, rank: int, step: int) -> None:
    """Test hook: the chosen rank dies (no cleanup) at the chosen step, once per marker file."""
    if fault is None or fault.rank != rank or fault.step != step or os.path.exists(fault.marker):
        return
    Path(fault.marker).parent.mkdir(parents=True, exist_ok=True)
    Path(fault.marker).write_text(f"rank {rank} exited at step {step}\n", encoding="utf-8")
    worker_line(f"fault injection: rank {rank} exits at step {step}")
    os._exit(1)


def global_metrics(stats: StepStats, tokens: int, elapsed: float, pos: DataPosition,
                   device: torch.device) -> dict[str, float]:  # fmt: skip
    """Loss averaged and tokens summed over ranks; lr/grad norm are already global."""
    t = torch.tensor([stats.loss, float(tokens)], dtype=torch.float64, device=device)
    world = 1
    if dist.is_initialized():
        dist.all_reduce(t)
        world = dist.get_world_size()
    loss, total_tokens = float(t[0]) / world, float(t[1])
    out = {"loss": loss, "tokens_per_s": total_tokens / max(elapsed, 1e-9), "lr": stats.lr, "grad_norm": stats.grad_norm,
           "step_time_s": elapsed, "epoch": float(pos.epoch)}  # fmt: skip
    out.update({k: float(v) for k, v in stats.metrics.items()})
    return out


def next_step_batches(job: StageJob, stage: Stage, parts: ModelParts, rows: RowStream, step: int, rank: int,
                      device: torch.device) -> tuple[list[Batch], DataPosition]:  # fmt: skip
    micro, pos = [], None
    for k in range(job.cfg.grad_accum):
        batch_rows, pos = rows.next_rows()
        gen = torch.Generator().manual_seed(noise_seed(job.cfg.seed, step, rank, k))
        micro.append(stage.build_batch(batch_rows, parts, gen).to(device))
    return micro, pos


def run_loop(job: StageJob, stage: Stage, parts: ModelParts, engine: TrainEngine, state: TrainState,
             rows: RowStream, rank: int) -> TrainState:  # fmt: skip
    """Train from `state.step` to `max_steps`; returns the final state."""
    import ray.train

    cfg = job.cfg
    logger = MetricsLogger(cfg.output_dir, stage.name, cfg.max_steps, cfg.log_every) if rank == 0 else None
    probe = ImageGapProbe(cfg.image_gap_every, cfg.image_gap_batches, parts.image_token_id,
                          int(parts.model.config.vision_config.spatial_merge_size))  # fmt: skip
    start = state.step
    try:
        while state.step < cfg.max_steps:
            step = state.step + 1
            maybe_fault(job.fault, rank, step)
            t0 = time.perf_counter()
            micro, pos = next_step_batches(job, stage, parts, rows, step, rank, engine.device)
            probe.collect(micro)
            stats = engine.train_step(micro)
            state = TrainState(step, pos)
            metrics = global_metrics(stats, sum(b.n_tokens for b in micro), time.perf_counter() - t0, pos, engine.device)
            if probe.due(step, cfg.max_steps):
                metrics.update(probe.measure(stage, parts.model, step))
                if logger:
                    logger.write_json("image_gap.json", probe.history)
            if logger:
                extra = {"study_ids": [s for b in micro for s in b.study_ids], "batches": pos.batches, "start_step": start}
                logger.log(step, metrics, extra)
            if step % cfg.checkpoint_every == 0 or step == cfg.max_steps:
                with tempfile.TemporaryDirectory(prefix="echo_ckpt_") as tmp:
                    write_checkpoint(engine, parts, state, Path(tmp))
                    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
                if logger:
                    logger.sync()
            elif step % job.dist.report_every == 0:  # every rank alike: a report is a barrier over ranks
                ray.train.report(metrics)
    finally:
        if logger:
            logger.close()
    return state


def train_func(config: dict) -> None:
    """Ray Train worker entry point: config = {"job": StageJob, "rows": RowSource} (echo_ray.train.rows)."""
    import ray.train
    import ray.train.torch

    job: StageJob = config["job"]
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    torch.manual_seed(job.cfg.seed)
    parts = load_parts(job, device)
    stage = build_stage(job)
    module = StageModule(parts.model, stage)
    engine = make_engine(job.dist.backend, module, job.dist, job.cfg.optim, job.cfg.max_steps, job.cfg.batch_size,
                         job.cfg.grad_accum, device, job.cfg.ema_decay)  # fmt: skip
    state = TrainState()
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = restore_checkpoint(engine, Path(d))
        if rank == 0:
            worker_line(f"[{job.stage}] resumed from step {state.step} (epoch {state.position.epoch}, "
                        f"{state.position.batches} micro-batches in)")  # fmt: skip
    source: RowSource = config["rows"]
    rows = source.open(job, parts, rank, state.position)
    rows.callbacks.on_start(state, engine.averaged)
    state = run_loop(job, stage, parts, engine, state, rows, rank)
    rows.callbacks.on_finish(state)

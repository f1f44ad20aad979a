"""The engine deployment: one replica = one model, one `DecodeEngine`, one scheduler thread.

It takes ready rows (`RowRequest`: token ids, pixel tensors, grid, mode, budget) from the ingress
deployment (service.py) through a `DeploymentHandle` and answers with block updates as a handle
stream (`handle.options(stream=True).decode.remote(row, timeout_s)`), or, for a plain
request, as one answer (`handle.decode_whole.remote(row, timeout_s)`); no HTTP, no
bytes, no image decoding here. A thin shell over `EngineCore` (continuous.py). One GPU per replica
on a cluster (serve_config.yaml), a CPU fraction locally; Serve replaces a replica that dies and
the ingress retries its plain requests once (service.py).

Usage (app.py binds it under the ingress):
    engine = ReportEngine.bind(ServeConfig(model="runs/dcd/final"), DecodeConfig(), PromptConfig(), ModelConfig())
    gen = handle.options(stream=True).decode.remote(row, 60.0)         # Accepted, then [BlockUpdate], ...
    updates = await handle.decode_whole.remote(row, 60.0)              # Refused | [BlockUpdate, ..., last]
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import replace

from PIL import Image
from ray import serve

from echo_ray.config import DecodeConfig, ModelConfig, PromptConfig, ServeConfig
from echo_ray.decode.engine import DecodeEngine, RowRequest
from echo_ray.decode.rows import ModelSide, RowFactory, row_leaves
from echo_ray.decode.scheduler import Update
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.serve.continuous import EngineCore, Message, Refused
from echo_ray.serve.metrics import SchedulerMetrics

logger = logging.getLogger("ray.serve")


def replica_id() -> str:
    ctx = serve.get_replica_context()
    return getattr(getattr(ctx, "replica_id", None), "unique_id", "") or ""


@serve.deployment(
    name="ReportEngine",
    # Local default (echo-ray serve, tests): a CPU fraction. serve_config.yaml sets num_gpus: 1 on a cluster.
    ray_actor_options={"num_cpus": 0.5, "num_gpus": 0},
    max_ongoing_requests=88,  # app.py sets it from the slots and queue (engine_max_ongoing)
    health_check_period_s=10,
    # An internal hop: the ingress's access line (same request id) already records each request.
    logging_config={"enable_access_log": False},
)
class ReportEngine:
    def __init__(self, cfg: ServeConfig, decode: DecodeConfig, prompt: PromptConfig, model: ModelConfig | None = None):
        t0 = time.perf_counter()
        ckpt = load_checkpoint(cfg.model, model, cfg.device)  # `model`: the config's model section (app.py)
        rows = RowFactory(ModelSide.of(ckpt), decode, prompt)
        slots = replace(rows.cfg.slots, max_len=min(rows.cfg.slots.max_len, rows.side.max_context))
        engine = DecodeEngine(ckpt.model, ckpt.mask_id, ckpt.eos_id, slots)
        self.core = EngineCore(engine, cfg.max_queue, SchedulerMetrics(engine.free_slots))
        mode, _ = rows.mode(rows.cfg.mode)
        blank = rows.row([Image.new("RGB", (224, 224))], "en", rows.cfg.mode, mode.block_size)
        t1 = time.perf_counter()
        self.core.warmup(blank)  # one one-block decode: proves the model runs before the replica is ready
        self.warmup_ms = round((time.perf_counter() - t1) * 1000, 1)
        self.last_row: RowRequest | None = None
        self.core.start()
        logger.info("engine replica loaded and warmed up in %.0f ms (%d slots)", (time.perf_counter() - t0) * 1000,
                    slots.max_rows)  # fmt: skip

    def __del__(self):
        if getattr(self, "core", None) is not None:
            self.core.close()

    async def decode(self, row: RowRequest, timeout_s: float) -> AsyncIterator[Message]:
        """Handle-stream entry (streamed requests): Accepted or Refused, then updates (EngineCore.run)."""
        self.last_row = row  # a reference only: /v1/status shows what a row carries (`row_leaves`)
        async for msg in self.core.run(row, timeout_s, streaming=True):
            yield msg

    async def decode_whole(self, row: RowRequest, timeout_s: float) -> Refused | list[Update]:
        """Unary entry (plain requests): the refusal, or every update of the row in one answer.

        One return value instead of a stream's item + end-of-stream reports: less work on both sides."""
        self.last_row = row
        return await self.core.whole(row, timeout_s)

    async def stats(self) -> dict:
        """This replica's id, slots, queue, rows per step, CPU counters and the last row's leaf types."""
        last = row_leaves(self.last_row) if self.last_row is not None else {}
        return {"replica": replica_id(), "warmup_ms": self.warmup_ms, **self.core.snapshot(), "last_row": last}

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom autoscaling metrics (Ray Serve calls this on the replica) for a custom policy."""
        snap = self.core.scheduler.snapshot()
        return {k: float(snap[k]) for k in ("slots_in_use", "queue_length", "mean_rows_per_step")}

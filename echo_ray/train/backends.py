"""Training backends behind one small interface: DeepSpeed ZeRO (default) and plain torch DDP.

`make_engine(backend, ...)` picks from `ENGINES`. DeepSpeed is imported only when selected; when
it is not installed (the `train` extra is absent) the DDP engine is used instead, with a log line.
Both run AdamW (torch's implementation: no JIT-compiled kernels, so CPU and GPU behave alike),
gradient clipping, linear warm-up then cosine decay to 10 % (`lr_factor`), and gradient
accumulation. On CPU DeepSpeed runs on the gloo process group Ray Train created, in fp32.

State for resume: DeepSpeed writes its own (possibly ZeRO-partitioned) model/optimizer/scheduler
files, each rank its own shard; DDP writes the weights as safetensors plus the optimizer and
scheduler state dicts (tensors only, loaded with ``weights_only=True``) from rank 0.

With `ema_decay` > 0 both keep an exponential moving average of the trained weights
(echo_ray.train.ema): updated after every optimizer step, saved and restored with the state, and
it is what `export_state_dict` exports and `averaged()` puts in the model for scoring.

Usage:
    engine = make_engine("deepspeed", StageModule(model, stage), dist_cfg, optim_cfg, max_steps, 4, 1, device)
    stats = engine.train_step([batch])               # StepStats(loss, grad_norm, lr, metrics)
    engine.save_state(dir); engine.load_state(dir)   # every rank
    sd = engine.export_state_dict()                  # every rank; the full HF state dict on rank 0
    with engine.averaged(): score(engine.hf_model)   # the averaged weights (as trained without ema_decay)
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from echo_ray.config import DistributedConfig, OptimConfig
from echo_ray.errors import ConfigError
from echo_ray.train.ema import WeightAverage, averaged
from echo_ray.train.stage import Batch, StageModule

log = logging.getLogger(__name__)


@dataclass
class StepStats:
    loss: float  # mean over micro-batches (this rank)
    grad_norm: float
    lr: float
    metrics: dict[str, float]


def lr_factor(step: int, warmup: int, total: int) -> float:
    """LR multiplier after `step` optimizer steps: linear warm-up, then cosine down to 0.1."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / span)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _mean_metrics(per_micro: list[dict[str, float]]) -> dict[str, float]:
    keys = per_micro[0].keys() if per_micro else []
    return {k: sum(m[k] for m in per_micro) / len(per_micro) for k in keys}


def check_average(backend: str, dist_cfg: DistributedConfig, ema_decay: float, key: str) -> None:
    """A weight average needs whole weights on every rank; ZeRO-3 partitions them (echo_ray.train.ema)."""
    if ema_decay > 0 and backend == "deepspeed" and dist_cfg.zero_stage == 3:
        raise ConfigError(f"{key}={ema_decay} needs whole weights on every rank, and ZeRO-3 partitions them: set "
                          f"{key}=0, or train.distributed.zero_stage <= 2 or backend ddp")  # fmt: skip


class TrainEngine(ABC):
    """One optimizer step over micro-batches, state save/load, and HF weight export."""

    name = ""

    def __init__(self, module: StageModule, dist_cfg: DistributedConfig, optim: OptimConfig,
                 max_steps: int, micro_batch: int, grad_accum: int, device: torch.device,
                 ema_decay: float = 0.0):  # fmt: skip
        self.module, self.dist_cfg, self.optim_cfg = module, dist_cfg, optim
        self.max_steps, self.micro_batch, self.grad_accum, self.device = max_steps, micro_batch, grad_accum, device
        self.ema_decay = ema_decay
        self.ema: WeightAverage | None = None  # started by the subclass once the weights sit on the device
        check_average(self.name, dist_cfg, ema_decay, "ema_decay")

    def start_average(self) -> None:
        if self.ema_decay > 0:
            self.ema = WeightAverage(self.trainable(), self.ema_decay)

    def averaged(self):
        """Context: the model holds the averaged weights (no-op without ema_decay)."""
        return averaged(self.ema)

    def _after_step(self) -> None:
        if self.ema is not None:
            self.ema.update()

    def _save_average(self, out_dir: Path) -> None:
        if self.ema is not None and _rank() == 0:
            self.ema.save(out_dir)

    def _load_average(self, ckpt_dir: Path) -> None:
        if self.ema is not None:
            self.ema.load(ckpt_dir)

    def _exported(self) -> dict[str, torch.Tensor]:
        """The full state dict (rank 0, whole weights): the averaged weights when there is an average."""
        if self.ema is None:
            return self.module.model.state_dict()
        with self.averaged():
            return {k: v.detach().clone() for k, v in self.module.model.state_dict().items()}

    @property
    def hf_model(self):
        return self.module.model

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
        w, total = self.optim_cfg.warmup_steps, self.max_steps
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, w, total))

    @abstractmethod
    def train_step(self, batches: list[Batch]) -> StepStats: ...

    @abstractmethod
    def save_state(self, out_dir: Path) -> None: ...

    @abstractmethod
    def load_state(self, ckpt_dir: Path) -> None: ...

    @abstractmethod
    def export_state_dict(self) -> dict[str, torch.Tensor] | None: ...


class DDPEngine(TrainEngine):
    """torch DistributedDataParallel + AdamW (the fallback when DeepSpeed is absent or not chosen)."""

    name = "ddp"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.module.to(self.device)
        ids = [self.device.index] if self.device.type == "cuda" else None
        ddp = torch.nn.parallel.DistributedDataParallel
        self.wrapped = ddp(self.module, device_ids=ids) if dist.is_initialized() else self.module
        o = self.optim_cfg
        self.optimizer = torch.optim.AdamW(self.trainable(), lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
        self.scheduler = self.schedule(self.optimizer)
        self.start_average()

    def _forward(self, batch: Batch):
        if self.dist_cfg.bf16 and self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return self.wrapped(batch)
        return self.wrapped(batch)

    def train_step(self, batches: list[Batch]) -> StepStats:
        losses, metrics = [], []
        for i, batch in enumerate(batches):
            last = i == len(batches) - 1
            sync = self.wrapped.no_sync() if (not last and hasattr(self.wrapped, "no_sync")) else contextlib.nullcontext()
            with sync:
                loss, m = self._forward(batch)
                (loss / len(batches)).backward()
            losses.append(float(loss.detach()))
            metrics.append(m)
        gn = torch.nn.utils.clip_grad_norm_(self.trainable(), self.optim_cfg.grad_clip or float("inf"))
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._after_step()
        return StepStats(sum(losses) / len(losses), float(gn), float(lr), _mean_metrics(metrics))

    def save_state(self, out_dir: Path) -> None:
        if _rank() != 0:
            return
        from safetensors.torch import save_model

        out_dir.mkdir(parents=True, exist_ok=True)
        save_model(self.module.model, str(out_dir / "model.safetensors"))
        torch.save(self.optimizer.state_dict(), out_dir / "optimizer.pt")
        torch.save(self.scheduler.state_dict(), out_dir / "scheduler.pt")
        self._save_average(out_dir)

    def load_state(self, ckpt_dir: Path) -> None:
        from safetensors.torch import load_model

        load_model(self.module.model, str(ckpt_dir / "model.safetensors"), device=str(self.device))
        self.optimizer.load_state_dict(torch.load(ckpt_dir / "optimizer.pt", map_location=self.device, weights_only=True))
        self.scheduler.load_state_dict(torch.load(ckpt_dir / "scheduler.pt", weights_only=True))
        self._load_average(ckpt_dir)

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        return self._exported() if _rank() == 0 else None


# backend name -> "module:Class"; imported on use so DeepSpeed loads only when chosen.
ENGINES: dict[str, str] = {
    "deepspeed": "echo_ray.train.ds_engine:DeepSpeedEngine",
    "ddp": "echo_ray.train.backends:DDPEngine",
}


def resolve_backend(backend: str) -> str:
    """The backend that will run: DeepSpeed falls back to DDP when the package is not installed."""
    if backend not in ENGINES:
        raise ValueError(f"unknown training backend {backend!r}; expected one of {sorted(ENGINES)}")
    if backend == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        log.warning("deepspeed is not installed (pip install 'echo_ray[train]'); training with torch DDP")
        return "ddp"
    return backend


def make_engine(backend: str, module: StageModule, dist_cfg: DistributedConfig, optim: OptimConfig,
                max_steps: int, micro_batch: int, grad_accum: int, device: torch.device,
                ema_decay: float = 0.0) -> TrainEngine:  # fmt: skip
    mod, cls = ENGINES[resolve_backend(backend)].split(":")
    return getattr(importlib.import_module(mod), cls)(module, dist_cfg, optim, max_steps, micro_batch, grad_accum, device,
                                                      ema_decay)  # fmt: skip

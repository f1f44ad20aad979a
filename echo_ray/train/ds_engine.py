"""DeepSpeed ZeRO engine (the default training backend); imported only when selected.

The ZeRO stage comes from `train.distributed.zero_stage` (3 for 7B on GPUs: parameters, gradients
and optimizer state partitioned). The optimizer is DeepSpeed's AdamW with ``torch_adam: true``
(torch's kernel; DeepSpeed's fused/CPU Adam would be JIT-compiled on first use). bf16 is enabled
only on GPUs; on CPU the run is fp32 on the gloo group Ray Train set up. Checkpoints are
DeepSpeed's own files under ``<dir>/state`` (each rank writes its shard), and the HF export of a
ZeRO-3 model gathers the 16-bit weights onto rank 0.

Usage:
    engine = DeepSpeedEngine(StageModule(model, stage), dist_cfg, optim_cfg, max_steps, micro_batch, accum, device)
"""

from __future__ import annotations

import functools
import importlib
import sys
from pathlib import Path
from typing import Any

import torch

from echo_ray.config import DistributedConfig, OptimConfig
from echo_ray.errors import InputError
from echo_ray.train.backends import StepStats, TrainEngine, _mean_metrics, _rank
from echo_ray.train.stage import Batch

TAG = "state"


def deepspeed_config(dist_cfg: DistributedConfig, optim: OptimConfig, micro_batch: int, grad_accum: int,
                     world_size: int, on_gpu: bool) -> dict[str, Any]:  # fmt: skip
    """The DeepSpeed JSON config for one run (pure; see the module docstring for the choices)."""
    zero: dict[str, Any] = {"stage": dist_cfg.zero_stage}
    if dist_cfg.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": micro_batch * grad_accum * world_size,
        "gradient_clipping": optim.grad_clip,
        "optimizer": {
            "type": "AdamW",
            "params": {"lr": optim.lr, "betas": list(optim.betas), "weight_decay": optim.weight_decay, "torch_adam": True},
        },
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "bf16": {"enabled": bool(dist_cfg.bf16 and on_gpu)},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }


def _skip_shm_comm_build() -> None:
    """CPU runs: DeepSpeed JIT-compiles a shared-memory all-reduce kernel (~100 s, needs a C++
    compiler) that only its inference all-reduce uses; training all-reduces go through gloo."""
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


MUON_MODULE = "deepspeed.runtime.zero.muon.muon_optimizer"


def _import_muon_without_compiling(ds_config: dict[str, Any]) -> None:
    """Import DeepSpeed's Muon module with its `torch.compile` decorators deferred to first call.

    DeepSpeed 0.19 imports this module in every ZeRO run (`is_zero_supported_optimizer` and the
    ZeRO-1/2 gradient reduction / ZeRO-3 and bf16 optimizer set-up all `isinstance`-check against
    `MuonWithAuxAdam`), and its three module-level `torch.compile(fn)` calls import dynamo/inductor:
    ~1.5 s of every stage's start-up. The import itself cannot be skipped (those checks need the
    real class), so the module is imported here, once, with DeepSpeed's `compiler.compile()`
    returning a decorator that compiles on first call instead. Only when the optimizer is not Muon
    (ours is always AdamW), so those kernels never run in this process; only on DeepSpeed 0.19.x,
    whose module layout this was checked against; a no-op when the module is already imported.
    """
    import deepspeed

    if (not deepspeed.__version__.startswith("0.19.") or MUON_MODULE in sys.modules
            or str(ds_config.get("optimizer", {}).get("type", "")).lower().startswith("muon")):  # fmt: skip
        return
    compiler = importlib.import_module("deepspeed.runtime.compiler")
    real = compiler.compile
    compiler.compile = lambda: _compile_on_first_call
    try:
        importlib.import_module(MUON_MODULE)
    finally:
        compiler.compile = real


def _compile_on_first_call(fn):
    """`torch.compile(fn)`, built on the first call; inside an outer compiled region dynamo traces
    `fn` itself, as it inlines an eagerly compiled function."""
    compiled = None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        nonlocal compiled
        if torch.compiler.is_compiling():
            return fn(*args, **kwargs)
        if compiled is None:
            compiled = torch.compile(fn)
        return compiled(*args, **kwargs)

    return run


class DeepSpeedEngine(TrainEngine):
    name = "deepspeed"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        import deepspeed

        on_gpu = self.device.type == "cuda"
        if not on_gpu:
            _skip_shm_comm_build()
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        self.module.to(self.device)
        cfg = deepspeed_config(self.dist_cfg, self.optim_cfg, self.micro_batch, self.grad_accum, world, on_gpu)
        _import_muon_without_compiling(cfg)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.module, model_parameters=self.trainable(), config=cfg, lr_scheduler=self.schedule
        )
        self.start_average()  # after initialize: ZeRO-1/2 made the weights views of its flat buffers

    def train_step(self, batches: list[Batch]) -> StepStats:
        losses, metrics = [], []
        lr = float(self.engine.get_lr()[0])
        for batch in batches:
            loss, m = self.engine(batch)
            self.engine.backward(loss)
            self.engine.step()
            losses.append(float(loss.detach()))
            metrics.append(m)
        self._after_step()  # the accumulation boundary: DeepSpeed stepped the optimizer on the last micro-batch
        gn = self.engine.get_global_grad_norm()
        return StepStats(sum(losses) / len(losses), float(gn if gn is not None else 0.0), lr, _mean_metrics(metrics))

    def save_state(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.engine.save_checkpoint(str(out_dir), tag=TAG, save_latest=False)
        self._save_average(out_dir)

    def load_state(self, ckpt_dir: Path) -> None:
        path, _ = self.engine.load_checkpoint(str(ckpt_dir), tag=TAG, load_optimizer_states=True,
                                              load_lr_scheduler_states=True)  # fmt: skip
        if path is None:
            raise InputError(f"no DeepSpeed state under {ckpt_dir}/{TAG}")
        self._load_average(ckpt_dir)

    def export_state_dict(self) -> dict[str, torch.Tensor] | None:
        if self.dist_cfg.zero_stage == 3:
            full = self.engine._zero3_consolidated_16bit_state_dict()  # collective: every rank calls it
            if _rank() != 0:
                return None
            return {k[len("model.") :]: v for k, v in full.items() if k.startswith("model.")}
        return self._exported() if _rank() == 0 else None

"""Row modes of the decode engine: what must match for rows to share one step, and their samplers.

A `RowMode` is hashable; the engine groups running rows by it. Multi-step schedules are looked up
by name in `SCHEDULES` (name -> factory(mode) -> sampler with `select(confidence, masked, step)`),
so a new schedule is one entry. `planned_steps` tells the engine how many forwards a block takes
when the host can know it without reading the device (one-step: 1; static confidence schedule:
simulated from the masked counts; static quota schedule: quotas until the block is covered); None means data-dependent (checked once per step).

Usage:
    mode = RowMode.from_decode(resolve_decode(ckpt, DecodeConfig(mode="multistep", steps=4)))
    sampler = make_sampler(mode)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from echo_ray.config import DecodeConfig
from echo_ray.decode.samplers import ConfidenceSampler, OneStepSampler, QuotaSampler, step_quotas

KINDS = ("ar", "onestep", "multistep")


@dataclass(frozen=True)
class RowMode:
    kind: Literal["ar", "onestep", "multistep"]
    block_size: int = 1
    steps: int | None = None
    threshold: float | None = None
    schedule: str = "confidence"
    record_topk: int = 0
    cache: Literal["fused", "vanilla"] = "fused"  # vanilla: one extra clean-write forward per block

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown decode kind {self.kind!r}; expected one of {KINDS}")
        if self.kind == "ar" and self.block_size != 1:
            raise ValueError(f"AR rows have block size 1, got {self.block_size}")
        if self.block_size < 1:
            raise ValueError(f"block size must be >= 1, got {self.block_size}")
        if self.cache not in ("fused", "vanilla"):
            raise ValueError(f"the engine caches 'fused' or 'vanilla', got {self.cache!r} (use decode.engine=reference)")
        if self.kind == "multistep":
            if self.schedule not in SCHEDULES:
                raise ValueError(f"unknown multi-step schedule {self.schedule!r}; expected one of {sorted(SCHEDULES)}")
            if self.steps is not None and not 1 <= self.steps <= self.block_size:
                raise ValueError(f"steps per block S={self.steps} must be in 1..B={self.block_size}")

    @classmethod
    def from_decode(cls, cfg: DecodeConfig, record_topk: int = 0) -> "RowMode":
        """From a resolved DecodeConfig (block size filled in; see generator.resolve_decode)."""
        if cfg.mode == "ar":
            return cls("ar", 1, record_topk=record_topk)
        if cfg.block_size is None:
            raise ValueError("RowMode.from_decode needs a resolved DecodeConfig (block_size is None)")
        B = int(cfg.block_size)
        cache = cfg.cache if cfg.cache in ("fused", "vanilla") else "fused"
        if cfg.mode == "onestep":
            return cls("onestep", B, record_topk=record_topk, cache=cache)
        schedule = getattr(cfg, "schedule", "confidence")
        # The quota schedule always has S steps (tau only changes what each step commits).
        steps = int(cfg.steps or B) if schedule == "quota" or cfg.threshold is None else None
        return cls("multistep", B, steps, cfg.threshold, schedule, record_topk, cache)


def _confidence(mode: RowMode):
    return ConfidenceSampler(steps=mode.steps, threshold=mode.threshold)


def _quota(mode: RowMode):
    return QuotaSampler(mode.block_size, mode.steps, mode.threshold)


SCHEDULES: dict[str, Callable[[RowMode], object]] = {"confidence": _confidence, "quota": _quota}


def make_sampler(mode: RowMode):
    if mode.kind == "onestep":
        return OneStepSampler()
    if mode.kind == "multistep":
        return SCHEDULES[mode.schedule](mode)
    return None


def planned_steps(sampler, masked_counts: list[int], block_size: int) -> int | None:
    """Forwards one block takes for rows with these masked counts, or None if data-dependent."""
    if isinstance(sampler, OneStepSampler):
        return 1 if max(masked_counts) > 0 else 0
    if isinstance(sampler, ConfidenceSampler) and sampler.steps is not None:
        most = 0
        for rem in masked_counts:
            step = 0
            while rem > 0:  # k = ceil(remaining / steps left), as ConfidenceSampler.select
                left = max(sampler.steps - step, 1)
                rem -= -(-rem // left)
                step += 1
            most = max(most, step)
        return most
    if isinstance(sampler, QuotaSampler) and sampler.threshold is None:
        # Static quotas commit min(quota, left) per step: the block ends once the quotas cover it.
        most = 0
        for rem in masked_counts:
            step = 0
            for q in step_quotas(sampler.block_size, sampler.steps):
                if rem <= 0:
                    break
                rem -= q
                step += 1
            most = max(most, step)
        return most
    return None

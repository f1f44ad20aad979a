"""Commit policies for one block: which masked positions become final at each denoising step.

- `OneStepSampler`: the ECHO student; every masked position is committed by the first forward.
- `ConfidenceSampler`: the multi-step teacher (method.md, "Decoding"): at each step take the argmax
  and its probability at every masked position, and commit either the k most confident (static
  schedule: S steps per block, k = ceil(remaining / steps left)) or every position above the
  threshold tau (dynamic), always at least one per row that still has a MASK.

Usage:
    commit = ConfidenceSampler(steps=4).select(confidence, masked, step)   # (N, B) bool
"""

from __future__ import annotations

import torch


class OneStepSampler:
    """Commit all masked positions at once."""

    name = "onestep"

    def select(self, confidence: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
        """confidence, masked: (N, B). Returns bool (N, B) positions to commit now."""
        return masked.clone()


class ConfidenceSampler:
    """Static (S steps per block) or dynamic (threshold tau) confidence-ordered commits."""

    name = "multistep"

    def __init__(self, steps: int | None = None, threshold: float | None = None):
        if (steps is None) == (threshold is None):
            raise ValueError("ConfidenceSampler needs exactly one of steps (static) or threshold (dynamic)")
        if steps is not None and steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if threshold is not None and not 0.0 < threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], got {threshold}")
        self.steps = steps
        self.threshold = threshold

    def select(self, confidence: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
        """confidence, masked: (N, B); step: 0-based step inside the block. Returns bool (N, B)."""
        conf = confidence.masked_fill(~masked, -1.0)
        remaining = masked.sum(dim=1)  # (N,)
        if self.steps is not None:
            left = max(self.steps - step, 1)
            k = torch.div(remaining + left - 1, left, rounding_mode="floor")  # ceil(remaining / left)
        else:
            k = (conf > self.threshold).sum(dim=1).clamp(min=1)
        k = torch.minimum(k, remaining)
        order = conf.argsort(dim=1, descending=True, stable=True)
        rank = torch.empty_like(order)
        rank.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
        return masked & (rank < k[:, None])


def step_quotas(block_size: int, steps: int) -> list[int]:
    """B slots over S steps as evenly as possible, earlier steps taking the remainder. -> S ints."""
    base, extra = divmod(block_size, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


def _top_k_mask(conf: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """conf (N, B) with -1 on ineligible slots; k (N,). True on each row's k highest (stable ties)."""
    order = conf.argsort(dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(conf.shape[1], device=conf.device).expand_as(order))
    return rank < k[:, None]


class QuotaSampler:
    """Per-step quotas of the published ECHO code; static, or dynamic with threshold tau."""

    name = "multistep"

    def __init__(self, block_size: int, steps: int | None = None, threshold: float | None = None):
        steps = block_size if steps is None else steps
        if not 1 <= steps <= block_size:
            raise ValueError(f"steps must be in 1..block size {block_size}, got {steps}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.block_size, self.steps, self.threshold = block_size, steps, threshold
        self.quotas = step_quotas(block_size, steps)

    def select(self, confidence: torch.Tensor, masked: torch.Tensor, step: int) -> torch.Tensor:
        """confidence, masked: (N, B); step: 0-based step inside the block. Returns bool (N, B)."""
        if step >= self.steps:
            # Quotas sum to B >= the masked count, so a block is always done after S steps.
            raise RuntimeError(f"quota schedule ran past its {self.steps} steps with slots still masked")
        quota = torch.full((masked.shape[0],), self.quotas[step], device=masked.device)
        conf = confidence.masked_fill(~masked, -1.0)
        top = masked & _top_k_mask(conf, torch.minimum(quota, masked.sum(dim=1)))
        if self.threshold is None:
            return top
        high = masked & (confidence > self.threshold)
        enough = high.sum(dim=1) >= quota
        return torch.where(enough[:, None], high, top)

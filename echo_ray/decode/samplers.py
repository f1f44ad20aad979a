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

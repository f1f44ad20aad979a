"""What a decoder reports: per-block events, the sampler's trace inside a block, and run counters.

Shared by every decoder (the reference BlockDecoder / ARDecoder, the static DecodeEngine) and by
their consumers (the SSE stream, DCD trajectories), so none of them imports another decoder for
its types.

Usage:
    for event in decoder.stream(batch):          # BlockEvent per finished block
        event.tokens[row], event.finished[row], event.trace   # trace: BlockTrace when recorded
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DecodeStats:
    forwards: int = 0
    prefill_forwards: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0


@dataclass
class BlockTrace:
    """What the sampler did inside one block (DCD trajectories). All (N, B) except top-k (N, B, K)."""

    tokens: torch.Tensor
    fixed: torch.Tensor
    commit_step: torch.Tensor  # 1-based step of commit; 0 on fixed prompt-tail slots
    topk_ids: torch.Tensor | None = None
    topk_logprobs: torch.Tensor | None = None


@dataclass
class BlockEvent:
    index: int
    tokens: list[list[int]]  # new response tokens per row (EOS and beyond cut)
    finished: list[bool]
    hit_max: list[bool]
    steps: int
    trace: BlockTrace | None = None

"""Per-block masking noise for RAD (method.md, "Noise").

Each noisy block draws its own rate t ~ U(t_min, t_max) (a clipped range, as BD3-LMs found it lowers
the variance of the loss), masks each of its response tokens independently with probability t, and
masks one uniformly chosen response token when the draw masked none, so every block trains.
Prompt-tail slots of the first noisy block are never candidates. All randomness comes from the
caller's `torch.Generator`, so a resumed run re-draws the same noise for the same step.

`mix_block_tokens` is the DCD student's context noise: it replaces some clean response tokens with
another token of the same block, the errors a one-step decoder makes when it mixes two phrasings
("The The heart enlarged enlarged"), so the student also learns to continue after its own slips.

Usage:
    masked, t = sample_block_noise(block, candidate, 0.3, 0.8, generator)   # (N, L) each
    ids = mix_block_tokens(ids, block, clean_response, 0.05, generator)     # (N, L)
"""

from __future__ import annotations

from collections.abc import Iterator

import torch


def block_slots(block: torch.Tensor, selected: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
    """(row, slot indices) of each block's selected slots, row by row, blocks in ascending order.

    block: (N, L) long block index of every slot; selected: (N, L) bool. Both noise functions draw
    their randomness in this order, so a seeded generator gives the same noise on every run.
    """
    for i in range(block.shape[0]):
        sel = selected[i].bool()
        for b in torch.unique(block[i][sel]).tolist():
            yield i, torch.nonzero(sel & (block[i] == b)).flatten()


def sample_block_noise(
    block: torch.Tensor,
    candidate: torch.Tensor,
    t_min: float,
    t_max: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask response tokens block by block.

    block: (N, L) long block index of every slot; candidate: (N, L) bool, slots that may be masked
    (the response tokens of the noisy copy). Returns masked (N, L) bool and t (N, L) float32: the
    rate of the slot's block on candidate slots, 0 elsewhere.
    """
    if not 0.0 < t_min <= t_max <= 1.0:
        raise ValueError(f"noise range must satisfy 0 < t_min <= t_max <= 1, got [{t_min}, {t_max}]")
    if block.shape != candidate.shape or block.ndim != 2:
        raise ValueError(f"block and candidate must both be (N, L); got {tuple(block.shape)} and {tuple(candidate.shape)}")
    masked = torch.zeros_like(candidate, dtype=torch.bool)
    rate = torch.zeros(candidate.shape, dtype=torch.float32)
    for i, slots in block_slots(block, candidate):
        t = t_min + (t_max - t_min) * float(torch.rand((), generator=generator))
        hit = torch.rand(len(slots), generator=generator) < t
        if not bool(hit.any()):
            hit[int(torch.randint(len(slots), (), generator=generator))] = True
        masked[i, slots[hit]] = True
        rate[i, slots] = t
    return masked, rate


def mix_block_tokens(
    ids: torch.Tensor,
    block: torch.Tensor,
    eligible: torch.Tensor,
    rate: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Replace each eligible token, with probability `rate`, by an eligible token of its own block.

    ids, block: (N, L) long; eligible: (N, L) bool (the clean response slots). Returns a new (N, L)
    tensor; slots that are not eligible are never changed, and a block with one eligible slot keeps it.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"context noise rate must be in [0, 1), got {rate}")
    out = ids.clone()
    if rate == 0.0:
        return out
    for i, slots in block_slots(block, eligible):
        hit = torch.rand(len(slots), generator=generator) < rate
        if len(slots) < 2 or not bool(hit.any()):
            continue
        src = slots[torch.randint(len(slots), (int(hit.sum()),), generator=generator)]
        out[i, slots[hit]] = ids[i, src]
    return out

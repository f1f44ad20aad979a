"""Training losses of stages 1-2 (method.md): AR next-token CE and RAD's 1/t-weighted masked CE.

- `ar_loss`: standard shift (the logit at i predicts token i + 1); only response tokens, EOS
  included, carry labels; mean over labelled tokens.
- `rad_loss`: no shift (the logit at a noisy slot predicts the clean token of the position it
  copies); cross-entropy on masked slots, each divided by its block's rate t, summed and divided
  by the number of response tokens (EOS padding included, as EOS positions are supervised). This
  is the BD3-LMs / MDLM NELBO weight for a linear schedule, per block.

Usage:
    loss = ar_loss(logits, labels)                          # labels: IGNORE_INDEX off the response
    loss = rad_loss(logits, targets, masked, t, n_response)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def ar_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token CE. logits: (N, L, V) or the (K, V) slots lm_logits selected; labels: (N, L) or
    (K,), label at i is the token at i + 1
    (already shifted by the batch builder) or IGNORE_INDEX. Returns a scalar."""
    sel = labels != IGNORE_INDEX
    n = int(sel.sum())
    if n == 0:
        raise ValueError("batch has no labelled response tokens")
    return F.cross_entropy(logits[sel], labels[sel], reduction="sum") / n


def rad_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    masked: torch.Tensor,
    t: torch.Tensor,
    n_response: int,
) -> torch.Tensor:
    """Sum over masked slots of CE / t, over `n_response`.

    logits: (N, L, V); targets: (N, L) clean token at every slot; masked: (N, L) bool; t: (N, L)
    (or any leading shape (...) in place of (N, L), e.g. the (K,) masked slots lm_logits selected);
    per-slot block rate (> 0 where masked); n_response: response tokens in the batch (sum of R').
    Returns a scalar.
    """
    if n_response <= 0:
        raise ValueError("n_response must be positive")
    sel = masked.bool()
    ce = F.cross_entropy(logits[sel], targets[sel], reduction="none")
    return (ce / t[sel].to(ce.dtype)).sum() / n_response

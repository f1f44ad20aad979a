"""The DCD student loss: commit-step-weighted forward KL to the teacher's conditionals, plus EOS CE.

method.md, "Stage 3: DCD", phase 2. For a response position j with teacher commit step s_j:

    loss = (sum_j w(s_j) KL(p_j || q_j) + sum_e w_eos * (-log q_e(EOS))) / (sum_j w(s_j) + sum_e w_eos)

where j runs over positions before the teacher's first EOS and e over the first EOS and the
positions after it in its block (their target is EOS, with weight w_eos).

The remaining mass, explicitly: the teacher record keeps only the top-K ids. The KL is taken over
K + 1 buckets: the K ids, plus one "rest" bucket holding everything else. Teacher bucket
probabilities are p_k = exp(renormalized_k + logmass) and p_rest = 1 - exp(logmass); the student's
are q_k (its full softmax at those ids) and q_rest = its mass on all other ids (computed as a
logsumexp, not 1 - sum, so it stays accurate when q is concentrated). This is the exact KL between
the two distributions coarse-grained to K + 1 outcomes: zero iff the student matches the teacher on
every top-K id and on the leftover mass, never more than the full-vocabulary KL. Renormalizing both
sides to the top-K instead would let the student put arbitrary mass outside them. Both
distributions exclude MASK (its logit is -inf, as in decoding), so `top_k` must be < V - 1.

Weights: x = (s - 1) / (S - 1) in [0, 1] (x = 0 when S = 1); linear w = 1 + strength * x,
exp w = exp(strength * x), flat w = 1 (the ablation). Later commits carry more mean-field bias, so
w grows with s; dividing by S - 1 makes `strength` mean the same for any S.

Sharpened targets (`sharpen_targets`, `train.dcd.loss.target_temperature` T < 1): each teacher
conditional, coarse-grained to the K ids + rest, is raised to the power 1/T and renormalized. T = 1 is
the paper's loss; T -> 0 approaches a one-hot on the teacher's committed token (the teacher decodes
greedily, so it committed the argmax). Why: where the teacher was nearly tied between phrasings at
the step it committed a token, a soft target trains the one-step student to stay tied there while
the later positions of the same phrase (committed after it, conditioned on it) are sharp; on a
held-out context the tied position can then flip alone and the block mixes two phrasings.

Usage:
    w = commit_weights(commit_step, steps=4, schedule="linear", strength=1.0)
    lp, mass = sharpen_targets(topk_logprobs, topk_logmass, temperature=0.5)
    loss, parts = dcd_loss(logits, topk_ids, topk_logprobs, topk_logmass, kl_w, eos_w, eos_id, mask_id)
"""

from __future__ import annotations

import torch

SCHEDULES = ("linear", "exp", "flat")


def commit_weights(commit_step: torch.Tensor, steps: int | torch.Tensor, schedule: str, strength: float) -> torch.Tensor:
    """w(s) per position. commit_step: (...) long in 1..S; steps: S (int or broadcastable). -> float32."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown weight schedule {schedule!r}; expected one of {SCHEDULES}")
    if strength < 0:
        raise ValueError(f"weight strength must be >= 0 (w must not decrease with the step), got {strength}")
    S = torch.as_tensor(steps, dtype=torch.float32, device=commit_step.device)
    x = (commit_step.float() - 1.0) / (S - 1.0).clamp(min=1.0)
    if schedule == "linear":
        return 1.0 + strength * x
    if schedule == "exp":
        return torch.exp(strength * x)
    return torch.ones_like(x)


def sharpen_targets(
    topk_logprobs: torch.Tensor, topk_logmass: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher conditionals at temperature T over the K ids + rest bucket.

    topk_logprobs: (..., K) renormalized over the K ids; topk_logmass: (...) log mass of the K ids.
    Returns the same pair for p^(1/T) / Z. T = 1 returns the inputs unchanged.
    """
    if temperature <= 0:
        raise ValueError(f"target temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return topk_logprobs, topk_logmass
    mass = topk_logmass.float()
    full = topk_logprobs.float() + mass[..., None]
    rest = torch.log((-torch.expm1(mass)).clamp(min=0.0))  # -inf where the K ids hold all the mass
    scaled = torch.cat([full, rest[..., None]], dim=-1) / temperature
    scaled = scaled - scaled.logsumexp(-1, keepdim=True)
    new_mass = scaled[..., :-1].logsumexp(-1)
    return scaled[..., :-1] - new_mass[..., None], new_mass


def bucket_kl(
    logq: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor, topk_logmass: torch.Tensor
) -> torch.Tensor:
    """KL(teacher || student) over the K ids + rest bucket.

    logq: (M, V) student log-probs (MASK at -inf); topk_ids: (M, K) long; topk_logprobs: (M, K)
    renormalized teacher log-probs; topk_logmass: (M,). Returns (M,) float32, >= 0.
    """
    lp = topk_logprobs.float() + topk_logmass.float()[:, None]  # teacher log p_k in the full distribution
    lq = logq.gather(1, topk_ids)
    kl_top = (lp.exp() * (lp - lq)).sum(-1)
    rest_q = logq.scatter(1, topk_ids, float("-inf")).logsumexp(-1)  # log of the student's other mass
    p_rest = (-torch.expm1(topk_logmass.float())).clamp(min=0.0)
    log_p_rest = torch.log(p_rest.clamp(min=torch.finfo(torch.float32).tiny))
    kl_rest = torch.where(p_rest > 0, p_rest * (log_p_rest - rest_q), torch.zeros_like(p_rest))
    return (kl_top + kl_rest).clamp(min=0.0)


def dcd_loss(
    logits: torch.Tensor,
    topk_ids: torch.Tensor,
    topk_logprobs: torch.Tensor,
    topk_logmass: torch.Tensor,
    kl_weight: torch.Tensor,
    eos_weight: torch.Tensor,
    eos_id: int,
    mask_id: int,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted KL + EOS loss over the student's slots.

    logits: (N, L, V) student logits; topk_ids: (N, L, K) long; topk_logprobs: (N, L, K);
    topk_logmass: (N, L); kl_weight: (N, L) w(s_j) on KL slots, 0 elsewhere; eos_weight: (N, L)
    w_eos on EOS-target slots, 0 elsewhere (a slot has at most one of the two). Any leading shape in
    place of (N, L) works, e.g. the (M,) supervised slots lm_logits selected. Returns the scalar
    loss and float parts {kl (mean), eos_nll (mean, 0 without EOS slots), eos_slots, weight} for metrics.
    """
    if bool(((kl_weight > 0) & (eos_weight > 0)).any()):
        raise ValueError("a slot cannot carry both a KL and an EOS target")
    kl_sel, eos_sel = kl_weight > 0, eos_weight > 0
    total_w = kl_weight[kl_sel].sum() + eos_weight[eos_sel].sum()
    if float(total_w) <= 0:
        raise ValueError("batch has no supervised DCD positions")
    sel = kl_sel | eos_sel
    logits_sel = logits[sel].float()
    logits_sel[:, mask_id] = float("-inf")  # the teacher's distribution excludes MASK
    logq = torch.log_softmax(logits_sel, dim=-1)  # (M, V)
    is_kl = kl_sel[sel]
    kl = bucket_kl(logq[is_kl], topk_ids[kl_sel].long(), topk_logprobs[kl_sel], topk_logmass[kl_sel])
    eos_nll = -logq[~is_kl][:, eos_id]
    kl_sum = (kl_weight[kl_sel].float() * kl).sum()
    eos_sum = (eos_weight[eos_sel].float() * eos_nll).sum()
    loss = (kl_sum + eos_sum) / total_w
    parts = {
        "kl": float(kl.detach().mean()) if kl.numel() else 0.0,
        "eos_nll": float(eos_nll.detach().mean()) if eos_nll.numel() else 0.0,
        "eos_slots": float(eos_nll.numel()),
        "weight": float(total_w),
    }
    return loss, parts

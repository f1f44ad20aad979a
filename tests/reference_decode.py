"""Test-only reference decoder, written from the published ECHO inference description (issue 11).

One prompt at a time, no padding, no KV cache: the canvas is prompt + MASK up to a whole number
of blocks; block k (columns [kB, kB+B)) is decoded by recomputing the whole sequence up to its end
at every step, under the block-causal mask (column i sees column j iff j // B <= i // B). The B
slots of a block are split into S per-step quotas as evenly as possible, earlier steps taking the
remainder; static commits the quota's most confident masked slots, dynamic (tau) commits every
masked slot above tau when that is at least the quota, else the quota's most confident. Decoding
stops after the first block holding EOS after the prompt. As in echo_ray, MASK is never a final
token (its logit is excluded before the argmax and the confidence).

`conformance_cases` compares it, token for token, with echo_ray's batched decoders (the static-slot
engine and the reference BlockDecoder; one-step fused, multi-step quota static/dynamic) for B in {4, 8} and S in {B, B/2}; the test suite and
`benchmarks/decode.py` (`reference_schedule_identical`) both run it.

The tiny preset's random weights emit one token everywhere, which would make any schedule look
right; `diversify` redraws the language model's matrices (std 0.3) so outputs vary and the
confidences spread over (0, 1), and the cases use a tau inside that spread (0.25 by default) so
the dynamic rule takes both of its branches.

Usage:
    toks = reference_decode(model, prompt, mask_id, eos_id, block_size=8, steps=4, threshold=0.85, max_new=24)
    results = conformance_cases(model, prompts, mask_id, eos_id, pad_id, max_new=24)   # {case: bool}
"""

from __future__ import annotations

import math

import torch

from echo_ray.config import SlotsConfig
from echo_ray.decode.batch import collate_prompts
from echo_ray.decode.blockwise import BlockDecoder
from echo_ray.decode.engine import DecodeEngine, RowMode
from echo_ray.decode.engine_batch import EngineBatch
from echo_ray.decode.samplers import OneStepSampler, QuotaSampler
from echo_ray.model.forward import embed, extend_positions, image_features, lm_logits, prompt_positions


def _quotas(B: int, S: int) -> list[int]:
    return [B // S + (1 if i < B % S else 0) for i in range(S)]


def _commit(conf: torch.Tensor, masked: torch.Tensor, quota: int, threshold: float | None) -> torch.Tensor:
    """conf, masked: (B,). The slots one step commits."""
    cand = torch.where(masked, conf, torch.full_like(conf, -math.inf))
    if threshold is not None:
        high = masked & (cand > threshold)
        if int(high.sum()) >= quota:
            return high
    commit = torch.zeros_like(masked)
    k = min(quota, int(masked.sum()))
    if k:
        commit[torch.topk(cand, k).indices] = True
    return commit


@torch.no_grad()
def reference_decode(model, prompt, mask_id: int, eos_id: int, block_size: int, steps: int,
                     threshold: float | None, max_new: int) -> list[int]:  # fmt: skip
    """New tokens of one prompt (cut at the first EOS, at most `max_new`)."""
    B, ids = block_size, prompt.input_ids.to(model.device)
    P = ids.shape[0]
    feats = image_features(model, prompt.pixel_values.to(model.device), prompt.image_grid_thw.to(model.device))
    pos, delta = prompt_positions(model, ids, prompt.image_grid_thw.to(model.device))
    n_blocks = math.ceil((P + max_new) / B)
    x = torch.full((n_blocks * B,), mask_id, dtype=torch.long, device=model.device)
    x[:P] = ids
    cols = torch.arange(n_blocks * B, device=model.device) // B
    quotas = _quotas(B, steps)
    for blk in range(P // B, n_blocks):
        s, e = blk * B, blk * B + B
        for step in range(steps):
            masked = torch.zeros(B, dtype=torch.bool, device=x.device)
            masked[max(0, P - s) :] = x[max(s, P) : e] == mask_id
            if not bool(masked.any()):
                break
            seen = (cols[:e, None] >= cols[None, :e])[None]  # (1, e, e) block-causal
            emb = embed(model, x[None, :e], feats)
            logits = lm_logits(model, emb, extend_positions(pos, delta, e)[:, None], seen)[0, s:e]
            logits[:, mask_id] = -math.inf
            conf, tok = torch.log_softmax(logits, dim=-1).max(dim=-1)
            commit = _commit(conf.exp(), masked, quotas[step], threshold)
            x[s:e] = torch.where(commit, tok, x[s:e])
        if bool((x[max(s, P) : e] == eos_id).any()):
            break
    out = x[P:].tolist()
    out = out[: out.index(eos_id)] if eos_id in out else out
    return out[:max_new]


def echo_ray_decode(model, prompts, mask_id, eos_id, pad_id, block_size, sampler, cache, max_new) -> list[list[int]]:
    """echo_ray's batched block decoder on all prompts at once -> new tokens per row.

    cache "engine" runs the static-slot DecodeEngine (its default decoder); the others the reference
    BlockDecoder with that KV strategy."""
    if cache == "engine":
        return _engine_decode(model, prompts, mask_id, eos_id, block_size, sampler, max_new)
    batch = collate_prompts(model, prompts, block_size, pad_id, mask_id)
    dec = BlockDecoder(model, mask_id, eos_id, block_size, sampler, cache, max_new)
    out: list[list[int]] = [[] for _ in prompts]
    for ev in dec.stream(batch):
        for i, t in enumerate(ev.tokens):
            out[i].extend(t)
    return out


def _engine_decode(model, prompts, mask_id, eos_id, block_size, sampler, max_new) -> list[list[int]]:
    if isinstance(sampler, OneStepSampler):
        mode = RowMode("onestep", block_size)
    else:
        mode = RowMode("multistep", block_size, sampler.steps, sampler.threshold, "quota")
    engine = DecodeEngine(model, mask_id, eos_id, SlotsConfig(max_rows=len(prompts), max_len=512))
    out: list[list[int]] = [[] for _ in prompts]
    for ev in EngineBatch(engine, prompts, mode, max_new).events():
        for i, t in enumerate(ev.tokens):
            out[i].extend(t)
    return out


@torch.no_grad()
def diversify(model, std: float = 0.3, seed: int = 0):
    """Redraw every 2-D weight of the language model from N(0, std^2) (module doc). In place."""
    gen = torch.Generator().manual_seed(seed)
    for p in model.model.language_model.parameters():
        if p.dim() == 2:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float64).to(p.dtype) * std)
    return model


def pick_eos(model, prompts, mask_id: int, at: int = 9) -> int:
    """A token the model emits mid-way through the first prompt's report (rows then stop at different blocks)."""
    free = reference_decode(model, prompts[0], mask_id, -1, 4, 4, None, at + 1)
    return free[at]


def conformance_cases(model, prompts, mask_id: int, eos_id: int, pad_id: int, max_new: int = 24,
                      threshold: float = 0.25, caches: tuple[str, ...] = ("engine", "fused")) -> dict[str, bool]:  # fmt: skip
    """{case name: echo_ray == reference on every prompt} (module doc)."""
    results: dict[str, bool] = {}
    for B in (4, 8):
        variants = [("onestep", 1, None, OneStepSampler())]
        for S in sorted({B, B // 2}):
            variants.append((f"quota_static S={S}", S, None, QuotaSampler(B, S)))
            variants.append((f"quota_dynamic S={S}", S, threshold, QuotaSampler(B, S, threshold)))
        for name, S, tau, sampler in variants:
            ref = [reference_decode(model, p, mask_id, eos_id, B, S, tau, max_new) for p in prompts]
            for cache in caches if name != "onestep" else [c for c in caches if c in ("engine", "fused")]:
                got = echo_ray_decode(model, prompts, mask_id, eos_id, pad_id, B, sampler, cache, max_new)
                results[f"B={B} {name} cache={cache}"] = got == ref
    return results

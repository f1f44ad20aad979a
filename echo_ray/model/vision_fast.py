"""Qwen2.5-VL vision tower for the decoders: HF's computation with the per-grid work done once.

`transformers`' vision forward recomputes, on every call, everything that depends only on the
image grid (t, h, w): rotary position ids and cos/sin, the window permutation and its inverse
(`argsort`), the window and image boundaries (host loops), and it runs attention once per window
or image by splitting the sequence. On CPU for a 64-patch image that bookkeeping costs more than
the two tiny transformer blocks. Here it is computed once per grid (`VisionPlan`, cached per
vision module) and attention runs as one SDPA call with a block-diagonal mask (None when the
sequence is one window/image, the common case): every key outside a query's segment gets weight
exactly 0, so each output equals HF's per-segment attention. The patch embedding is the Conv3d as
one matmul (`echo_ray.model.patch_embed`). Norms, rotary (float32, as HF) and MLPs use HF's own
modules and formulas; tests/test_vision_fast.py checks features against `image_features` in
float64. Used by `DecodeEngine.admit` and `collate_prompts` (the same vision work on both sides of
every speed comparison); training keeps `image_features`.

Usage:
    feats = fast_image_features(model, pixel_values, grid_thw)   # == image_features(...), (T_img, H)
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import rotate_half
from transformers.vision_utils import get_vision_cu_seqlens, get_vision_position_ids, get_vision_window_index

_PLANS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@dataclass
class VisionPlan:
    """Everything of one vision forward that depends only on the grid (S patches in window order)."""

    window_index: torch.Tensor  # (S / unit,) merged-token order of the windowed sequence
    reverse: torch.Tensor  # (S / unit,) its inverse (HF's argsort)
    cos: torch.Tensor  # (S, 1, head_dim) float32, window order
    sin: torch.Tensor
    full_mask: torch.Tensor | None  # (S, S) additive, per image; None for one image
    window_mask: torch.Tensor | None  # (S, S) additive, per window; None for one window


def _segment_mask(cu: torch.Tensor, n: int, dtype: torch.dtype) -> torch.Tensor | None:
    """Additive (n, n) mask letting position i see j only inside its [cu[k], cu[k+1]) segment."""
    if cu.numel() <= 2:
        return None
    seg = torch.bucketize(torch.arange(n, device=cu.device), cu[1:].to(torch.long), right=True)
    mask = torch.zeros((n, n), dtype=dtype, device=cu.device)
    return mask.masked_fill_(seg[:, None] != seg[None, :], torch.finfo(dtype).min)


def vision_plan(visual, grid_thw: torch.Tensor, dtype: torch.dtype) -> VisionPlan:
    """The cached `VisionPlan` of `visual` for this grid (computed with HF's own helpers)."""
    plans = _PLANS.setdefault(visual, {})
    key = (tuple(map(tuple, grid_thw.tolist())), str(grid_thw.device), dtype)
    if key not in plans:
        unit = visual.spatial_merge_unit
        pos_ids = get_vision_position_ids(grid_thw, visual.spatial_merge_size)
        window_index, cu_window = get_vision_window_index(
            grid_thw, spatial_merge_size=visual.spatial_merge_size, window_size=visual.window_size,
            patch_size=visual.patch_size,
        )  # fmt: skip
        window_index = window_index.to(grid_thw.device)
        cu_full = get_vision_cu_seqlens(grid_thw)
        n = int(cu_full[-1])
        probe = torch.zeros((n, 1), dtype=dtype, device=grid_thw.device)
        cos, sin = visual.rotary_pos_emb(probe, pos_ids)
        order = lambda t: t.reshape(n // unit, unit, -1)[window_index].reshape(n, -1)  # noqa: E731
        plans[key] = VisionPlan(
            window_index, torch.argsort(window_index), order(cos)[:, None].float(), order(sin)[:, None].float(),
            _segment_mask(cu_full, n, dtype), _segment_mask(cu_window.to(grid_thw.device), n, dtype),
        )  # fmt: skip
    return plans[key]


def _block(blk, h: torch.Tensor, plan: VisionPlan, mask: torch.Tensor | None) -> torch.Tensor:
    """One `Qwen2_5_VLVisionBlock` on h (S, D), attention as one masked SDPA call."""
    attn, S = blk.attn, h.shape[0]
    q, k, v = F.linear(blk.norm1(h), attn.qkv.weight, attn.qkv.bias).view(S, 3, attn.num_heads, -1).unbind(1)
    q32, k32 = q.float(), k.float()  # HF rotates in float32 whatever the dtype
    q = (q32 * plan.cos + rotate_half(q32) * plan.sin).to(h.dtype)
    k = (k32 * plan.cos + rotate_half(k32) * plan.sin).to(h.dtype)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1), attn_mask=mask,
                                         scale=attn.scaling)  # fmt: skip
    h = h + F.linear(out.transpose(0, 1).reshape(S, -1), attn.proj.weight, attn.proj.bias)
    return h + blk.mlp(blk.norm2(h))


@torch.no_grad()
def fast_image_features(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Vision tower + merger like `echo_ray.model.forward.image_features`. (patches, D), (n, 3) -> (sum T_i, H)."""
    visual = model.model.visual
    w = visual.patch_embed.proj.weight
    plan = vision_plan(visual, grid_thw, w.dtype)
    x = pixel_values.to(w.dtype).reshape(-1, w[0].numel())
    S, unit = x.shape[0], visual.spatial_merge_unit
    h = F.linear(x, w.view(w.shape[0], -1))  # the Conv3d (kernel == stride) as one matmul
    h = h.view(S // unit, unit, -1)[plan.window_index].reshape(S, -1)
    for i, blk in enumerate(visual.blocks):
        h = _block(blk, h, plan, plan.full_mask if i in visual.fullatt_block_indexes else plan.window_mask)
    merged = visual.merger(h)
    return merged[plan.reverse]

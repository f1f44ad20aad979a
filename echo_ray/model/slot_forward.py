"""Qwen2.5-VL language-model forward over preallocated per-row K/V slots (the decode engine's model code).

transformers' cache objects grow by concatenation and cannot write into caller-owned buffers at
chosen indices, so this module runs the text decoder itself, reusing the HF module's weights and
sub-modules (RMSNorm, q/k/v/o projections, M-RoPE, MLP); `tests/test_slot_forward.py` checks it
against `echo_ray.model.forward.lm_logits` to float64 precision.

Layout: per layer one K and one V buffer of shape (max_rows, length, kv_heads, head_dim). A forward
writes the new keys/values of every query at `write_pos` (before attending, so queries see their own
block), then attends over positions [0, key_len) of the row's slot with the block-causal rule over
absolute positions: a query at position p sees keys j < vis_end = (p // B + 1) * B. That one rule
covers the prompt prefill (block-causal; B = 1 is causal), the fused step ``[clean block k-1 | noisy
block k]`` (the noisy half's K/V lands in the positions the next step's clean half overwrites), the
vanilla write and later multi-step steps, and the AR step. Logits are computed only for the query
columns `read` and returned in the model dtype.

Usage:
    kv = SlotKV(model, max_rows=16, length=2176)
    logits = slot_forward(model, kv, rows, embeds, positions, write_pos, vis_end, key_len, read=slice(B, 2 * B))
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_shape(model) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the language model."""
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim


class SlotKV:
    """Static K/V buffers: per layer (max_rows, length, kv_heads, head_dim), allocated once."""

    def __init__(self, model, max_rows: int, length: int, device=None, dtype=None):
        cfg = model.config.get_text_config()
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("the slot forward implements full attention only; this model uses a sliding window")
        n_layers, kv_heads, head_dim = text_shape(model)
        device = device or model.device
        dtype = dtype or model.dtype
        shape = (max_rows, length, kv_heads, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.max_rows, self.length = max_rows, length

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def clear(self, slot: int) -> None:
        """Zero one slot, so nothing of a previous row (not even NaN) can reach a masked-out key."""
        for t in self.k + self.v:
            t[slot].zero_()

    def move(self, src: int, dst: int, upto: int) -> None:
        """Copy positions [0, upto) of slot `src` into slot `dst` (row compaction)."""
        for t in self.k + self.v:
            t[dst, :upto].copy_(t[src, :upto])


def block_vis_end(pos: torch.Tensor, block: int) -> torch.Tensor:
    """Exclusive key bound of each query under the block-causal rule. pos: (N, Q) long -> (N, Q)."""
    return (torch.div(pos.clamp(min=0), block, rounding_mode="floor") + 1) * block


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _attention(attn, kv: SlotKV, layer: int, rows, row_idx, h, cos, sin, write_pos, mask, key_len):
    """One self-attention: project, rotate, write K/V into the slots, attend over [0, key_len)."""
    n, q_len, _ = h.shape
    hd = attn.head_dim
    q = attn.q_proj(h).view(n, q_len, -1, hd)
    k = attn.k_proj(h).view(n, q_len, -1, hd)
    v = attn.v_proj(h).view(n, q_len, -1, hd)
    c, s = cos[:, :, None], sin[:, :, None]
    q = q * c + _rotate_half(q) * s
    k = k * c + _rotate_half(k) * s
    kb, vb = kv.k[layer], kv.v[layer]
    kb.index_put_((row_idx, write_pos), k)
    vb.index_put_((row_idx, write_pos), v)
    keys = kb[rows, :key_len].transpose(1, 2)
    vals = vb[rows, :key_len].transpose(1, 2)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), keys, vals, attn_mask=mask, scale=attn.scaling,
                                         enable_gqa=keys.shape[1] != q.shape[2])  # fmt: skip
    return attn.o_proj(out.transpose(1, 2).reshape(n, q_len, -1))


def slot_forward(
    model,
    kv: SlotKV,
    rows: slice | torch.Tensor,
    embeds: torch.Tensor,
    positions: torch.Tensor,
    write_pos: torch.Tensor,
    vis_end: torch.Tensor,
    key_len: int,
    read: slice,
) -> torch.Tensor:
    """Run the LM over slots `rows`, writing K/V at `write_pos`; logits of the `read` query columns.

    rows: a slice of slots or a (N,) long tensor; embeds: (N, Q, H); positions: (3, N, Q) M-RoPE ids;
    write_pos, vis_end: (N, Q) long (every query sees keys j < vis_end); key_len: keys read per row
    (>= every vis_end). Returns logits (N, len(read), V) in the model dtype.
    """
    lm = model.model.language_model
    n, q_len, _ = embeds.shape
    if isinstance(rows, slice):
        row_idx = torch.arange(rows.start, rows.stop, device=embeds.device)[:, None].expand(n, q_len)
    else:
        row_idx = rows[:, None].expand(n, q_len)
    keys = torch.arange(key_len, device=embeds.device)
    mask = (keys[None, None, :] < vis_end[:, :, None])[:, None]  # (N, 1, Q, key_len)
    cos, sin = lm.rotary_emb(embeds, positions)
    h = embeds
    for i, layer in enumerate(lm.layers):
        a = _attention(layer.self_attn, kv, i, rows, row_idx, layer.input_layernorm(h), cos, sin, write_pos,
                       mask, key_len)  # fmt: skip
        h = h + a
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    return model.lm_head(lm.norm(h[:, read]))

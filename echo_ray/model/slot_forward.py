"""Qwen2.5-VL language-model forward over preallocated per-row K/V slots (the decode engine's model code).

transformers' cache objects grow by concatenation and cannot write into caller-owned buffers at
chosen indices, so this module runs the text decoder itself on the HF module's weights;
`tests/test_slot_forward.py` checks it against `echo_ray.model.forward.lm_logits` to float64
precision. On CPU a tiny model's forward is dominated by per-op overhead, so the weights are
repacked once (`SlotWeights`, rebuilt when a parameter changes): one matmul yields
``[q | k | v | rot(q) | rot(k) | 0]`` (rotate_half folded into permuted, negated weight rows, so
RoPE is ``y * C + y_rot * S`` with C = 1, S = 0 over v), gate and up are one matmul, RMSNorm is
`torch.rms_norm` (bitwise equal to HF's float32 formula), and a layer is ~15 tensor ops.

Layout: one buffer (layers, max_rows, length, 2 * kv_heads * head_dim) holding each position's
``[k | v]``; `SlotKV.k` / `.v` are per-layer (max_rows, length, kv_heads, head_dim) views. A forward
writes the new keys/values of every query at `write_pos` (`index_copy_`, before attending, so
queries see their own block), then attends over positions [0, key_len) of the row's slot with the
block-causal rule over absolute positions: a query at position p sees keys j < vis_end =
(p // B + 1) * B. That one rule covers the prompt prefill (block-causal; B = 1 is causal), the fused
step ``[clean block k-1 | noisy block k]``, the vanilla write and later multi-step steps, and the AR
step. Logits are computed only for the query columns `read` and returned in the model dtype.

Usage:
    kv = SlotKV(model, max_rows=16, length=2176)
    logits = slot_forward(model, kv, rows, embeds, positions, write_pos, vis_end, key_len, read=slice(B, 2 * B))
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F


def text_shape(model) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the language model."""
    cfg = model.config.get_text_config()
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return cfg.num_hidden_layers, cfg.num_key_value_heads, head_dim


class SlotKV:
    """Static K/V buffer (layers, max_rows, length, 2 * kv_heads * head_dim), allocated once."""

    def __init__(self, model, max_rows: int, length: int, device=None, dtype=None):
        cfg = model.config.get_text_config()
        if getattr(cfg, "use_sliding_window", False):
            raise ValueError("the slot forward implements full attention only; this model uses a sliding window")
        n_layers, kv_heads, head_dim = text_shape(model)
        device = device or model.device
        dtype = dtype or model.dtype
        self.buf = torch.zeros((n_layers, max_rows, length, 2 * kv_heads * head_dim), device=device, dtype=dtype)
        split = self.buf.view(n_layers, max_rows, length, 2, kv_heads, head_dim)
        self.k = [split[i, :, :, 0] for i in range(n_layers)]  # (max_rows, length, kv_heads, head_dim) views
        self.v = [split[i, :, :, 1] for i in range(n_layers)]
        self.max_rows, self.length, self.kv_dim = max_rows, length, kv_heads * head_dim

    @property
    def nbytes(self) -> int:
        return self.buf.numel() * self.buf.element_size()

    def clear(self, slot: int) -> None:
        """Zero one slot, so nothing of a previous row (not even NaN) can reach a masked-out key."""
        self.buf[:, slot].zero_()

    def move(self, src: int, dst: int, upto: int) -> None:
        """Copy positions [0, upto) of slot `src` into slot `dst` (row compaction)."""
        self.buf[:, dst, :upto].copy_(self.buf[:, src, :upto])


def block_vis_end(pos: torch.Tensor, block: int) -> torch.Tensor:
    """Exclusive key bound of each query under the block-causal rule. pos: (N, Q) long -> (N, Q)."""
    return (torch.div(pos.clamp(min=0), block, rounding_mode="floor") + 1) * block


def _rot_rows(w: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of W (heads * hd, ...) so that x @ rot(W).T == rotate_half(x @ W.T) per head (exactly)."""
    w = w.reshape(-1, head_dim, *w.shape[1:])
    half = head_dim // 2
    return torch.cat([-w[:, half:], w[:, :half]], dim=1).reshape(-1, *w.shape[2:])


class SlotWeights:
    """The LM's weights repacked for few-op forwards; `SlotWeights.of(model)` caches per model."""

    _cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    def __init__(self, model):
        lm = model.model.language_model
        self.params = [p for p in lm.parameters()] + [model.lm_head.weight]
        self.key = self._fingerprint()
        attn0 = lm.layers[0].self_attn
        _, kv_heads, hd = text_shape(model)
        self.head_dim, self.scaling = hd, attn0.scaling
        self.n_heads = attn0.q_proj.out_features // hd
        self.q_dim, self.kv_dim = self.n_heads * hd, kv_heads * hd
        self.gqa = self.n_heads != kv_heads
        self.layers = [self._layer(layer) for layer in lm.layers]
        self.norm, self.norm_eps = lm.norm.weight, lm.norm.variance_epsilon
        self.lm_head = model.lm_head.weight
        self.embed = model.get_input_embeddings().weight
        self.rotary = lm.rotary_emb

    def _layer(self, layer) -> tuple:
        a, m, hd = layer.self_attn, layer.mlp, self.head_dim
        wq, wk, wv = a.q_proj.weight, a.k_proj.weight, a.v_proj.weight
        bq, bk, bv = a.q_proj.bias, a.k_proj.bias, a.v_proj.bias
        w = torch.cat([wq, wk, wv, _rot_rows(wq, hd), _rot_rows(wk, hd), torch.zeros_like(wv)])
        b = torch.cat([bq, bk, bv, _rot_rows(bq, hd), _rot_rows(bk, hd), torch.zeros_like(bv)])
        gate_up = torch.cat([m.gate_proj.weight, m.up_proj.weight])
        ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
        return (ln1.weight, ln1.variance_epsilon, w, b, a.o_proj.weight, ln2.weight, ln2.variance_epsilon, gate_up,
                m.down_proj.weight)  # fmt: skip

    def _fingerprint(self) -> tuple:
        return tuple((p.data_ptr(), p._version, p.dtype) for p in self.params)

    @classmethod
    def of(cls, model) -> "SlotWeights":
        """Cached repack of `model`, rebuilt if any LM parameter was replaced or changed in place."""
        w = cls._cache.get(model)
        if w is None or w.key != w._fingerprint():
            w = cls._cache[model] = cls(model)
        return w

    def rope(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, S) multipliers (N, Q, q_dim + 2 * kv_dim) for M-RoPE ids (3, N, Q) (HF's own cos/sin)."""
        cos, sin = self.rotary(x, positions)
        return self._tile(cos), self._tile(sin, fill=0.0)

    def _tile(self, c: torch.Tensor, fill: float = 1.0) -> torch.Tensor:
        heads = self.n_heads + self.kv_dim // self.head_dim
        rest = torch.full((*c.shape[:-1], self.kv_dim), fill, dtype=c.dtype, device=c.device)
        return torch.cat([c.repeat(*([1] * (c.dim() - 1)), heads), rest], dim=-1)

    def text_rope_table(self, n: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, S) rows (n, q_dim + 2 kv_dim) for text positions [0, n) (equal on the three M-RoPE axes):
        one HF rotary call, so each row is exactly what it gives for that position. Look up with
        `F.embedding(text_pos, table)` and pass as `slot_forward(rope=...)`."""
        pos = torch.arange(n, device=like.device)[None, None].expand(3, 1, -1)
        c, s = self.rope(like[:1, :1], pos)
        return c[0], s[0]


def _norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    # HF's Qwen2 RMSNorm computes in float32 whatever the model dtype; torch.rms_norm matches it bitwise.
    if x.dtype == torch.float32:
        return w * torch.rms_norm(x, (x.shape[-1],), None, eps)
    return w * torch.rms_norm(x.float(), (x.shape[-1],), None, eps).to(x.dtype)


def _layer(W: SlotWeights, lw: tuple, buf: torch.Tensor, rows, flat_idx, h, C, S, mask, key_len, n, pick=None):
    """One decoder layer on h (n * Q, H). With `pick` (the last layer) only the picked queries go past
    the K/V write: the others' outputs would never be read. Returns (rows of h kept, H)."""
    ln1, eps1, w, b, o, ln2, eps2, gate_up, down = lw
    D, qd, kvd, hd = W.q_dim + 2 * W.kv_dim, W.q_dim, W.kv_dim, W.head_dim
    y = F.linear(_norm(h, ln1, eps1), w, b)
    qkv = y[:, :D] * C + y[:, D:] * S  # RoPE on q and k; v passes (C = 1, S = 0)
    R, L = buf.shape[0], buf.shape[1]
    buf.view(R * L, 2 * kvd).index_copy_(0, flat_idx, qkv[:, qd:])
    q = qkv[:, :qd].view(n, -1, qd)
    if pick is not None:
        q, h, mask = pick(q), pick(h.view(n, -1, h.shape[-1])).flatten(0, 1), None if mask is None else pick(mask, 2)
        if q.shape[1] == 0:
            return h  # nothing read (the vanilla write): the K/V above is all this forward is for
    kv = buf[rows, :key_len]
    keys = kv[..., :kvd].unflatten(-1, (-1, hd)).transpose(1, 2)
    vals = kv[..., kvd:].unflatten(-1, (-1, hd)).transpose(1, 2)
    q_len = q.shape[1]
    out = F.scaled_dot_product_attention(q.unflatten(-1, (-1, hd)).transpose(1, 2), keys, vals, attn_mask=mask,
                                         scale=W.scaling, enable_gqa=W.gqa)  # fmt: skip
    h = h + F.linear(out.transpose(1, 2).reshape(n * q_len, qd), o)
    gu = F.linear(_norm(h, ln2, eps2), gate_up)
    inter = gu.shape[-1] // 2
    return h + F.linear(F.silu(gu[:, :inter]) * gu[:, inter:], down)


def _picker(read: slice | torch.Tensor, n: int):
    """x (n, Q, ...) along `dim` 1 (or 2) -> the read columns (n, n_read, ...)."""
    if isinstance(read, slice):
        return lambda x, dim=1: x[:, read] if dim == 1 else x[:, :, read]
    ar = torch.arange(n, device=read.device)
    return lambda x, dim=1: x[ar, read][:, None] if dim == 1 else x[ar, :, read][:, None, None]


def slot_forward(
    model,
    kv: SlotKV,
    rows: slice | torch.Tensor,
    embeds: torch.Tensor,
    positions: torch.Tensor | None,
    write_pos: torch.Tensor,
    vis_end: torch.Tensor | None,
    key_len: int,
    read: slice | torch.Tensor,
    rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    weights: SlotWeights | None = None,
) -> torch.Tensor:
    """Run the LM over slots `rows`, writing K/V at `write_pos`; logits of the `read` query columns.

    rows: a slice of slots or a (N,) long tensor; embeds: (N, Q, H); positions: (3, N, Q) M-RoPE ids
    (or None with `rope`, precomputed (C, S) (N, Q, q_dim + 2 kv_dim) looked up in `SlotWeights.text_rope_table`);
    write_pos: (N, Q) long; vis_end: (N, Q) long (every query sees keys j < vis_end) or None when
    every query sees all key_len keys; key_len: keys read per row (>= every vis_end); read: a slice
    of query columns or an (N,) long tensor of one column per row. Returns logits (N, n_read, V) in
    the model dtype. `weights`: a `SlotWeights` the caller keeps (the engine's snapshot); default the
    cached `SlotWeights.of(model)` (checked against the parameters on every call).
    """
    W = weights or SlotWeights.of(model)
    n, q_len, _ = embeds.shape
    dev = embeds.device
    first = torch.arange(rows.start, rows.stop, device=dev) if isinstance(rows, slice) else rows
    flat_idx = (first[:, None] * kv.length + write_pos).reshape(-1)
    mask = None
    if vis_end is not None:
        keys = torch.arange(key_len, device=dev)
        mask = torch.zeros((n, 1, q_len, key_len), dtype=embeds.dtype, device=dev)
        mask.masked_fill_((keys >= vis_end[:, :, None])[:, None], torch.finfo(embeds.dtype).min)
    C, S = rope if rope is not None else W.rope(embeds, positions)
    C, S = C.reshape(n * q_len, -1), S.reshape(n * q_len, -1)
    pick = _picker(read, n)
    h = embeds.reshape(n * q_len, -1)
    last = len(W.layers) - 1
    for i, lw in enumerate(W.layers):
        h = _layer(W, lw, kv.buf[i], rows, flat_idx, h, C, S, mask, key_len, n, pick if i == last else None)
    return F.linear(_norm(h, W.norm, W.norm_eps), W.lm_head).view(n, h.shape[0] // n, W.lm_head.shape[0])

"""Attention masks for ECHO, exactly as method.md ("Blocks and attention", "RAD", "Decoding") fixes them.

Every mask is a boolean tensor ``(N, Lq, Lk)`` where True means "query may attend to key". Tokens are
described by their block index (absolute alignment: block k holds positions [kB, (k+1)B) of the
row, so any constant shift per row — e.g. left padding by a multiple of B — leaves the mask
unchanged), whether they belong to the noisy stream, and whether they are real (not padding).

One rule covers training and decoding (cf. bd3lms' `block_diff_mask`):
- a clean/prompt query in block k sees clean/prompt keys of blocks <= k (block-causal);
- a noisy query in block k sees clean/prompt keys of blocks < k and noisy keys of block k;
- padding keys are never seen.
The RAD layout ``[prompt | clean response | noisy response]``, the vanilla and fused block-KV decode
steps and the no-cache recompute are all calls of `two_stream_mask` with different descriptors.

Usage:
    m = rad_mask(block_ids, is_noisy, valid)              # (N, L, L)
    attn = to_additive(m, torch.float32)                   # (N, 1, L, L) for transformers / SDPA
"""

from __future__ import annotations

import torch


def two_stream_mask(
    q_block: torch.Tensor,
    q_noisy: torch.Tensor,
    k_block: torch.Tensor,
    k_noisy: torch.Tensor,
    k_valid: torch.Tensor,
) -> torch.Tensor:
    """The block-diffusion rule for queries against keys.

    q_block, q_noisy: (N, Lq); k_block, k_noisy, k_valid: (N, Lk). Returns bool (N, Lq, Lk).
    """
    qb, kb = q_block[:, :, None], k_block[:, None, :]
    qn, kn = q_noisy[:, :, None].bool(), k_noisy[:, None, :].bool()
    clean_q = ~qn & ~kn & (kb <= qb)
    noisy_q = qn & ((~kn & (kb < qb)) | (kn & (kb == qb)))
    return (clean_q | noisy_q) & k_valid[:, None, :].bool()


def block_causal_mask(block: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Block-causal self-attention over one clean sequence. block, valid: (N, L) -> (N, L, L)."""
    clean = torch.zeros_like(valid, dtype=torch.bool)
    return two_stream_mask(block, clean, block, clean, valid)


def rad_mask(block: torch.Tensor, is_noisy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mask for the RAD row ``[prompt | clean | noisy]``; the noisy copy carries its source blocks.

    block: (N, L) absolute block of every token (noisy tokens: the block of the position they copy);
    is_noisy, valid: (N, L) bool. Returns (N, L, L).
    """
    return two_stream_mask(block, is_noisy, block, is_noisy, valid)


def causal_mask(positions: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Token-causal mask (the AR stage): key position <= query position. (N, L) -> (N, L, L)."""
    return block_causal_mask(positions, valid)  # block size 1 is plain causality


def decode_step_mask(
    cache_block: torch.Tensor,
    cache_valid: torch.Tensor,
    q_block: torch.Tensor,
    q_noisy: torch.Tensor,
    q_valid: torch.Tensor,
) -> torch.Tensor:
    """Mask for a decode forward whose keys are ``[cache | queries]``.

    The cache holds only clean keys. Vanilla step: queries = one noisy block; vanilla cache write:
    one clean block; fused step: ``[clean block k-1 | noisy block k]``.
    cache_*: (N, C); q_*: (N, Q). Returns (N, Q, C + Q).
    """
    k_block = torch.cat([cache_block, q_block], dim=1)
    k_noisy = torch.cat([torch.zeros_like(cache_valid, dtype=torch.bool), q_noisy.bool()], dim=1)
    k_valid = torch.cat([cache_valid.bool(), q_valid.bool()], dim=1)
    return two_stream_mask(q_block, q_noisy, k_block, k_noisy, k_valid)


def to_additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Bool (N, Lq, Lk) -> additive float (N, 1, Lq, Lk): 0 where allowed, dtype-min elsewhere.

    A finite minimum (not -inf) keeps rows with no allowed key (padding queries) NaN-free; their
    outputs are never read.
    """
    out = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    out.masked_fill_(~mask, torch.finfo(dtype).min)
    return out[:, None]

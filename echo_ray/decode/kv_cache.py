"""Block KV cache: clean keys/values of finished blocks, plus the block index of every cached column.

A forward over query tokens always appends their K/V (that is how transformers' cache works);
`BlockKVCache.forward` then keeps only the first `keep` query columns and crops the rest, so
- vanilla step: queries = noisy block, keep 0 (probe the cache, store nothing);
- vanilla write: queries = the final block as clean tokens, keep B (one extra forward per block);
- fused step: queries = ``[final block k-1 | MASK x B]``, keep B: block k-1 is written by the same
  forward that predicts block k (method.md, "Fused block KV cache": N forwards instead of 2N).

Usage:
    cache = BlockKVCache(model)
    logits = cache.forward(model, embeds, positions, q_block, q_noisy, q_valid, keep=B)
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from echo_ray.model.forward import lm_logits
from echo_ray.model.masks import decode_step_mask


class BlockKVCache:
    """A DynamicCache whose columns carry block ids and validity for the decode masks."""

    def __init__(self, model, n_rows: int, device: torch.device):
        self.kv = DynamicCache(config=model.config.get_text_config())
        self.block = torch.zeros((n_rows, 0), dtype=torch.long, device=device)
        self.valid = torch.zeros((n_rows, 0), dtype=torch.bool, device=device)

    @property
    def length(self) -> int:
        return self.block.shape[1]

    def forward(
        self,
        model,
        embeds: torch.Tensor,
        positions: torch.Tensor,
        q_block: torch.Tensor,
        q_noisy: torch.Tensor,
        q_valid: torch.Tensor,
        keep: int,
    ) -> torch.Tensor:
        """Run queries against ``[cache | queries]``; keep the first `keep` query columns cached.

        embeds: (N, Q, H); positions: (3, N, Q); q_block, q_noisy, q_valid: (N, Q); keep <= Q and
        the kept columns must be clean. Returns logits (N, Q, V).
        """
        if keep and bool(q_noisy[:, :keep].any()):
            raise ValueError("only clean tokens may be written to the block KV cache")
        mask = decode_step_mask(self.block, self.valid, q_block, q_noisy, q_valid)
        logits = lm_logits(model, embeds, positions, mask, cache=self.kv)
        drop = q_block.shape[1] - keep
        if drop:
            self.kv.crop(-drop)
        self.block = torch.cat([self.block, q_block[:, :keep]], dim=1)
        self.valid = torch.cat([self.valid, q_valid[:, :keep].bool()], dim=1)
        return logits

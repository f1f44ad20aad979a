"""Block-diffusion decoding: multi-step (teacher) and one-step (ECHO) with three KV strategies.

Each decode block starts as MASK (prompt tail kept); the sampler commits positions until none is
masked; the block's tokens are then final. Rows stop at the first block containing EOS (cut at
the EOS) or at `max_new_tokens`; finished rows ride along in the batch but emit nothing.

KV strategies (method.md, "Decoding"): `fused` (N forwards for N one-step blocks), `vanilla`
(a second forward per block writes its KV; the last block's write is skipped because nothing
reads it, so 2N - 1), and `none` (recompute the whole sequence each forward: the reference the
cached variants must match token for token).

Usage:
    dec = BlockDecoder(model, mask_id, eos_id, block_size=8, sampler=OneStepSampler(), cache="fused")
    for event in dec.stream(batch): ...         # one BlockEvent per finished block
    dec.stats.forwards, dec.stats.prefill_s, dec.stats.decode_s
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from echo_ray.decode.batch import PromptBatch
from echo_ray.decode.events import BlockEvent, BlockTrace, DecodeStats
from echo_ray.decode.kv_cache import BlockKVCache
from echo_ray.model.forward import embed, lm_logits
from echo_ray.model.masks import two_stream_mask

CACHE_MODES = ("fused", "vanilla", "none")


@dataclass
class _Rows:
    generated: list[int]
    done: list[bool]
    hit_max: list[bool] = field(default_factory=list)


class BlockDecoder:
    """Decode a `PromptBatch` block by block with a sampler and a KV strategy."""

    def __init__(self, model, mask_id: int, eos_id: int, block_size: int, sampler, cache: str = "fused",
                 max_new_tokens: int = 160, record_topk: int = 0):  # fmt: skip
        if cache not in CACHE_MODES:
            raise ValueError(f"unknown cache mode {cache!r}; expected one of {CACHE_MODES}")
        self.model, self.mask_id, self.eos_id = model, mask_id, eos_id
        self.B, self.sampler, self.cache_mode = block_size, sampler, cache
        self.max_new_tokens, self.record_topk = max_new_tokens, record_topk
        self.stats = DecodeStats()

    @torch.no_grad()
    def stream(self, batch: PromptBatch) -> Iterator[BlockEvent]:
        if batch.block_size != self.B:
            raise ValueError(f"batch collated for block size {batch.block_size}, decoder uses {self.B}")
        self.stats = DecodeStats()
        n, B = batch.n_rows, self.B
        tails = batch.first_fixed.sum(dim=1).tolist()
        n_blocks = max(math.ceil((t + self.max_new_tokens) / B) for t in tails)
        cache = self._prefill(batch)
        rows = _Rows(generated=[0] * n, done=[False] * n, hit_max=[False] * n)
        cur, fixed = batch.first_block.clone(), batch.first_fixed.clone()
        finals: list[torch.Tensor] = []  # final blocks (recompute mode, and the fused pending block)
        t0 = time.perf_counter()
        for k in range(n_blocks):
            start = batch.prefix_len + k * B
            forward = self._block_forward(batch, cache, finals, start)
            cur, trace, steps = self._denoise(forward, cur, fixed)
            event = self._finish_block(k, cur, fixed, rows, trace, steps)
            last = all(rows.done) or k == n_blocks - 1
            if not last and self.cache_mode == "vanilla":
                self._write_block(batch, cache, cur, start)
            finals.append(cur)
            self.stats.decode_s = time.perf_counter() - t0
            yield event
            if last:
                return
            cur = torch.full_like(cur, self.mask_id)
            fixed = torch.zeros_like(fixed)

    def _prefill(self, batch: PromptBatch) -> BlockKVCache | None:
        if self.cache_mode == "none" or batch.prefix_len == 0:
            return None if self.cache_mode == "none" else BlockKVCache(self.model, batch.n_rows, batch.prefix_ids.device)
        t0 = time.perf_counter()
        cache = BlockKVCache(self.model, batch.n_rows, batch.prefix_ids.device)
        L = batch.prefix_len
        blocks = batch.column_blocks(0, L)
        cache.forward(self.model, batch.prefix_embeds(self.model), batch.positions(0, L), blocks,
                      torch.zeros_like(batch.prefix_valid), batch.prefix_valid, keep=L)  # fmt: skip
        self.stats.forwards += 1
        self.stats.prefill_forwards += 1
        self.stats.prefill_s = time.perf_counter() - t0
        return cache

    def _block_forward(self, batch: PromptBatch, cache: BlockKVCache | None, finals: list[torch.Tensor],
                       start: int) -> Callable[[torch.Tensor, int], torch.Tensor]:  # fmt: skip
        """A function (current block ids, step) -> logits (N, B, V) for this block."""
        n, B, model = batch.n_rows, self.B, self.model

        def recompute(cur: torch.Tensor, step: int) -> torch.Tensor:
            ids = torch.cat([batch.prefix_ids, *finals, cur], dim=1)
            tail = torch.ones((n, ids.shape[1] - batch.prefix_len), dtype=torch.bool, device=ids.device)
            valid = torch.cat([batch.prefix_valid, tail], dim=1)
            noisy = torch.zeros_like(valid)
            noisy[:, -B:] = True
            block = batch.column_blocks(0, ids.shape[1])
            mask = two_stream_mask(block, noisy, block, noisy, valid)
            emb = embed(model, ids, batch.image_feats)
            return lm_logits(model, emb, batch.positions(0, ids.shape[1]), mask)[:, -B:]

        def cached(cur: torch.Tensor, step: int) -> torch.Tensor:
            fuse = self.cache_mode == "fused" and step == 0 and cache.length < start
            q_ids = torch.cat([finals[-1], cur], dim=1) if fuse else cur
            q_start = start - B if fuse else start
            width = q_ids.shape[1]
            noisy = torch.ones((n, width), dtype=torch.bool, device=cur.device)
            if fuse:
                noisy[:, :B] = False
            logits = cache.forward(model, embed(model, q_ids), batch.positions(q_start, width),
                                   batch.column_blocks(q_start, width), noisy,
                                   torch.ones_like(noisy), keep=B if fuse else 0)  # fmt: skip
            return logits[:, -B:]

        return recompute if self.cache_mode == "none" else cached

    def _write_block(self, batch: PromptBatch, cache: BlockKVCache, cur: torch.Tensor, start: int) -> None:
        """Vanilla cache: one extra forward stores the final block's clean K/V."""
        n, B = cur.shape
        clean = torch.zeros((n, B), dtype=torch.bool, device=cur.device)
        cache.forward(self.model, embed(self.model, cur), batch.positions(start, B),
                      batch.column_blocks(start, B), clean, ~clean, keep=B)  # fmt: skip
        self.stats.forwards += 1

    def _denoise(self, forward, cur: torch.Tensor, fixed: torch.Tensor) -> tuple[torch.Tensor, BlockTrace, int]:
        """Run sampler steps until the block has no MASK left."""
        masked = (cur == self.mask_id) & ~fixed
        commit_step = torch.zeros_like(cur)
        K = self.record_topk
        n, B = cur.shape
        top_ids = torch.zeros((n, B, K), dtype=torch.long, device=cur.device) if K else None
        top_lp = torch.zeros((n, B, K), dtype=torch.float32, device=cur.device) if K else None
        step = 0
        while bool(masked.any()):
            logits = forward(cur, step)
            logits[..., self.mask_id] = float("-inf")  # MASK is never a final token
            self.stats.forwards += 1
            logp = torch.log_softmax(logits, dim=-1)
            conf, tok = logp.max(dim=-1)
            commit = self.sampler.select(conf.exp(), masked, step) & masked
            cur = torch.where(commit, tok, cur)
            commit_step = torch.where(commit, torch.full_like(commit_step, step + 1), commit_step)
            if K:
                lp, ids = logp.topk(K, dim=-1)
                top_ids = torch.where(commit[..., None], ids, top_ids)
                top_lp = torch.where(commit[..., None], lp, top_lp)
            masked &= ~commit
            step += 1
        return cur, BlockTrace(cur, fixed.clone(), commit_step, top_ids, top_lp), step

    def _finish_block(self, k: int, cur: torch.Tensor, fixed: torch.Tensor, rows: _Rows,
                      trace: BlockTrace, steps: int) -> BlockEvent:  # fmt: skip
        """Cut at EOS / max length and update per-row state."""
        out: list[list[int]] = []
        for i in range(cur.shape[0]):
            if rows.done[i]:
                out.append([])
                continue
            toks = cur[i][~fixed[i]].tolist()
            budget = self.max_new_tokens - rows.generated[i]
            eos_at = toks.index(self.eos_id) if self.eos_id in toks else None
            if eos_at is not None and eos_at <= budget:
                toks = toks[:eos_at]
                rows.done[i] = True
            elif len(toks) >= budget:
                toks = toks[:budget]
                rows.hit_max[i] = rows.done[i] = True
            rows.generated[i] += len(toks)
            out.append(toks)
        trace_out = trace if self.record_topk or self.sampler.name == "multistep" else None
        return BlockEvent(k, out, list(rows.done), list(rows.hit_max), steps, trace_out)


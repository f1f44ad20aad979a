"""AR baseline: greedy token-by-token decoding with a KV cache (ECHO_AR, and the speed reference).

The prompt is prefilled with a causal mask (block size 1 is plain causality), then each forward
feeds the last token and reads the next from its logit (standard next-token shift, unlike the
block decoders). Events are emitted every `emit_every` tokens so streaming looks like the block
decoders'.

Usage:
    batch = collate_prompts(model, prompts, block_size=1, pad_id=pad, mask_id=mask)
    dec = ARDecoder(model, eos_id, max_new_tokens=160)
    tokens = [t for ev in dec.stream(batch) for t in ev.tokens[0]]
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import torch

from echo_ray.decode.batch import PromptBatch
from echo_ray.decode.events import BlockEvent, DecodeStats
from echo_ray.decode.kv_cache import BlockKVCache
from echo_ray.model.forward import embed


class ARDecoder:
    """Greedy causal decoding with per-row EOS and a length limit."""

    def __init__(self, model, eos_id: int, max_new_tokens: int = 160, emit_every: int = 8):
        self.model, self.eos_id = model, eos_id
        self.max_new_tokens, self.emit_every = max_new_tokens, emit_every
        self.stats = DecodeStats()

    @torch.no_grad()
    def stream(self, batch: PromptBatch) -> Iterator[BlockEvent]:
        if batch.block_size != 1:
            raise ValueError("the AR decoder needs prompts collated with block_size=1")
        self.stats = DecodeStats()
        n, L = batch.n_rows, batch.prefix_len
        t0 = time.perf_counter()
        cache = BlockKVCache(self.model, n, batch.prefix_ids.device)
        cols = batch.column_blocks(0, L)
        logits = cache.forward(self.model, batch.prefix_embeds(self.model), batch.positions(0, L), cols,
                               torch.zeros_like(batch.prefix_valid), batch.prefix_valid, keep=L)  # fmt: skip
        self.stats.forwards = self.stats.prefill_forwards = 1
        self.stats.prefill_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        done, hit_max = [False] * n, [False] * n
        pending: list[list[int]] = [[] for _ in range(n)]
        nxt = logits[:, -1].argmax(dim=-1)
        for step in range(self.max_new_tokens):
            for i, tok in enumerate(nxt.tolist()):
                if done[i]:
                    continue
                if tok == self.eos_id:
                    done[i] = True
                else:
                    pending[i].append(tok)
                    if step == self.max_new_tokens - 1:
                        done[i] = hit_max[i] = True
            last = all(done) or step == self.max_new_tokens - 1
            if last or (step + 1) % self.emit_every == 0:
                self.stats.decode_s = time.perf_counter() - t1
                yield BlockEvent(step // self.emit_every, pending, list(done), list(hit_max), 1)
                pending = [[] for _ in range(n)]
            if last:
                return
            col = L + step
            q_block = batch.column_blocks(col, 1)
            ones = torch.ones((n, 1), dtype=torch.bool, device=nxt.device)
            logits = cache.forward(self.model, embed(self.model, nxt[:, None]), batch.positions(col, 1), q_block,
                                   ~ones, ones, keep=1)  # fmt: skip
            self.stats.forwards += 1
            nxt = logits[:, -1].argmax(dim=-1)

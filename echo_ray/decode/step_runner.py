"""The engine's forwards: inputs built on the device from slot tensors, run eagerly or as CUDA graphs.

Four forward kinds over a group of slots (block size B; AR uses B = 1):
- `fused`: queries ``[prev block (clean) | cur block (noisy)]`` starting at pos0 - B; logits of the
  noisy half. Rows without a finished block (`has_prev` False) write their clean half into the
  slot's trash area, never read, so the prompt's prefilled K/V stays intact;
- `noisy`: queries = cur block at pos0 (later multi-step steps; vanilla steps); logits of all B;
- `write`: queries = prev block at pos0 - B (the vanilla cache's extra forward); no logits;
- `ar`: query = `cur[:, 0]` at pos0; logits of that one position.
Positions, write indices and the mask bound come from `pos0`, `delta` and `has_prev` by tensor
ops, so nothing is read back to the host. On CUDA with `cuda_graphs`, a group occupying slots
[0, n) runs a graph captured for slots [0, bucket) (bucket = the next of 1, 2, 4, ..., 64 or
max_rows) and a key length rounded up to 256; padded slots are free slots whose results are
dropped. Captures are lazy (first use of a shape) and share one memory pool.

Usage:
    runner = StepRunner(model, kv, table, trash=max_len + 64, cfg=SlotsConfig())
    logits = runner.run(sel, n, B, "fused", key_len)      # (n, B, V) model dtype
"""

from __future__ import annotations

import torch

from echo_ray.config import SlotsConfig
from echo_ray.decode.slots import MAX_BLOCK, SlotTable
import torch.nn.functional as F

from echo_ray.model.slot_forward import SlotKV, SlotWeights, block_vis_end, slot_forward

BUCKETS = (1, 2, 4, 8, 16, 32, 64)
KEY_ROUND = 256
KINDS = ("fused", "noisy", "write", "ar")


class StepRunner:
    def __init__(self, model, kv: SlotKV, table: SlotTable, trash: int, cfg: SlotsConfig):
        self.model, self.kv, self.table, self.trash = model, kv, table, trash
        self.fwd = torch.compile(slot_forward, dynamic=True) if cfg.compile else slot_forward
        self.use_graphs = bool(cfg.cuda_graphs) and model.device.type == "cuda"
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.replays = 0
        # Text positions of every slot position (pos + delta, delta <= 0) index this table.
        # The weights are snapshotted once (the engine decodes a frozen model; `refresh` after changing it).
        self.weights = SlotWeights.of(model)
        probe = torch.zeros((1, 1, 1), dtype=model.dtype, device=model.device)
        self.rope = self.weights.text_rope_table(kv.length, probe)
        self.cols = torch.arange(2 * MAX_BLOCK, device=model.device)

    def _compute(self, sel, B: int, kind: str, key_len: int, full: bool = False, all_prev: bool = False) -> torch.Tensor:
        t = self.table
        if kind == "fused":
            ids, start, read = torch.cat([t.prev[sel, :B], t.cur[sel, :B]], dim=1), t.pos0[sel] - B, slice(B, 2 * B)
        elif kind == "noisy":
            ids, start, read = t.cur[sel, :B], t.pos0[sel], slice(0, B)
        elif kind == "write":
            ids, start, read = t.prev[sel, :B], t.pos0[sel] - B, slice(0, 0)
        elif kind == "ar":
            ids, start, read = t.cur[sel, :1], t.pos0[sel], slice(0, 1)
        else:
            raise ValueError(f"unknown forward kind {kind!r}; expected one of {KINDS}")
        cols = self.cols[: ids.shape[1]]
        pos = start[:, None] + cols
        write = pos
        if kind in ("fused", "write") and not all_prev:
            stale = (cols < B)[None] & ~t.has_prev[sel][:, None]
            write = torch.where(stale, self.trash + cols, pos)
        text = (pos + t.delta[sel][:, None]).clamp_(min=0)  # < 0 only on trash-bound stale columns
        rope = F.embedding(text, self.rope[0]), F.embedding(text, self.rope[1])
        vis_end = None if full else block_vis_end(pos, B)
        emb = F.embedding(ids, self.weights.embed)
        return self.fwd(self.model, self.kv, sel, emb, None, write, vis_end, key_len, read, rope, self.weights)

    def refresh(self) -> None:
        """Re-read the model's weights (after they changed; CUDA graphs are dropped)."""
        self.weights = SlotWeights.of(self.model)
        self.graphs.clear()

    def run(self, sel, n: int, B: int, kind: str, key_len: int, full: bool = False, all_prev: bool = False) -> torch.Tensor:
        """Logits (n, Q_read, V) of one forward over the slots `sel` (n rows). `full`: the caller knows
        every query sees all key_len keys (AR rows at one position), so no mask is built; `all_prev`:
        the caller knows every row has a finished block (has_prev), so no clean column goes to the
        trash (both eager only; a CUDA graph always computes the general case)."""
        if self.use_graphs and isinstance(sel, slice) and sel.start == 0:
            return self._replay(n, B, kind, key_len)
        return self._compute(sel, B, kind, key_len, full, all_prev)

    def _bucket(self, n: int) -> int:
        fits = [b for b in BUCKETS if n <= b <= self.table.max_rows]
        return fits[0] if fits else self.table.max_rows

    def _replay(self, n: int, B: int, kind: str, key_len: int) -> torch.Tensor:
        bucket = self._bucket(n)
        keys = min(-(-key_len // KEY_ROUND) * KEY_ROUND, self.kv.length)
        key = (kind, B, bucket, keys)
        if key not in self.graphs:
            self.graphs[key] = self._capture(slice(0, bucket), B, kind, keys)
        graph, out = self.graphs[key]
        graph.replay()
        self.replays += 1
        return out[:n]

    def _capture(self, sel: slice, B: int, kind: str, key_len: int):
        # Warm-up forwards write the same K/V the replay writes (same inputs), so they are harmless.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._compute(sel, B, kind, key_len)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool):
            out = self._compute(sel, B, kind, key_len)
        return graph, out

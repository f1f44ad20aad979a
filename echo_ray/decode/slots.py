"""Per-row slot state of the decode engine: a host mirror for bookkeeping and device tensors for the step.

Running rows always occupy slots [0, running): when a row leaves, the row in the highest slot moves
into the hole (its K/V positions and slot tensors are copied once), so a single mode group is a
contiguous slice of the buffers and a step reads its K/V as a view, never a gather, and a CUDA
graph captured for slots [0, bucket) replays for any group of that size.

Device tensors (one entry per slot; block tokens padded to `MAX_BLOCK` columns):
- `pos0` (R,) long: absolute position of the current block's first token (AR: of the next token);
- `delta` (R,) long: M-RoPE offset; text positions are index + delta on all three axes;
- `has_prev` (R,) bool: the row has a finished block whose clean K/V the next fused step writes;
- `prev`, `cur` (R, MAX_BLOCK) long: the last finished block and the block being decoded
  (AR: `cur[:, 0]` is the next token); `fixed` (R, MAX_BLOCK) bool: prompt-tail slots of `cur`.

Usage:
    table = SlotTable(max_rows=16, device=model.device)
    slot = table.alloc(row)                 # lowest free slot
    moved = table.free(slot)                # (row id, old slot) moved into the hole, or None
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAX_BLOCK = 64  # widest block a slot holds; also the width of the trash area of every slot


@dataclass
class RowState:
    """Host mirror of one running row (no device reads needed to plan a step)."""

    row: int
    tag: object
    mode: object  # RowMode
    budget: int
    slot: int
    start: int  # absolute position of the current block (AR: of the next token to feed)
    tail: int  # prompt-tail tokens fixed in the current block
    generated: int = 0
    blocks: int = 0  # blocks (AR: tokens) emitted so far
    forwards: int = 0  # forwards this row took part in (prefill chunks included)


class SlotTable:
    """Slot allocation with compaction, plus the per-slot device tensors."""

    def __init__(self, max_rows: int, device: torch.device):
        self.max_rows = max_rows
        self.rows: list[RowState | None] = [None] * max_rows
        self.running = 0
        z = dict(device=device)
        self.pos0 = torch.zeros(max_rows, dtype=torch.long, **z)
        self.delta = torch.zeros(max_rows, dtype=torch.long, **z)
        self.has_prev = torch.zeros(max_rows, dtype=torch.bool, **z)
        self.prev = torch.zeros((max_rows, MAX_BLOCK), dtype=torch.long, **z)
        self.cur = torch.zeros((max_rows, MAX_BLOCK), dtype=torch.long, **z)
        self.fixed = torch.zeros((max_rows, MAX_BLOCK), dtype=torch.bool, **z)

    @property
    def free_slots(self) -> int:
        return self.max_rows - self.running

    def alloc(self, state: RowState) -> int:
        if self.running >= self.max_rows:
            raise RuntimeError("no free slot")  # callers check capacity first
        slot = self.running
        self.running += 1
        state.slot = slot
        self.rows[slot] = state
        return slot

    def _tensors(self) -> tuple[torch.Tensor, ...]:
        return self.pos0, self.delta, self.has_prev, self.prev, self.cur, self.fixed

    def free(self, slot: int) -> RowState | None:
        """Empty `slot`; the row in the last slot moves into it. Returns the moved row (slot updated)."""
        last = self.running - 1
        moved = None
        if slot != last:
            moved = self.rows[last]
            for t in self._tensors():
                t[slot] = t[last]
            self.rows[slot], moved.slot = moved, slot
        self.rows[last] = None
        for t in self._tensors():
            t[last] = 0  # a padded CUDA-graph row reads this slot: keep its write indices in range
        self.running -= 1
        return moved

    def selector(self, slots: list[int]) -> slice | torch.Tensor:
        """A view-friendly slice when `slots` are contiguous, else an index tensor (gather)."""
        if slots == list(range(slots[0], slots[0] + len(slots))):
            return slice(slots[0], slots[0] + len(slots))
        return torch.tensor(slots, dtype=torch.long, device=self.pos0.device)

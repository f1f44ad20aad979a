"""Run a list of prompts through a DecodeEngine and report batch-level `BlockEvent`s like BlockDecoder.

The adapter behind `ReportGenerator` (decode.engine: static) and the DCD teacher: it admits the
rows (as many as there are free slots; the rest are admitted as rows finish), steps the engine
until all of them have finished and turns each step's per-row events into one `BlockEvent` over
all rows (rows not in that step get no tokens). Traces (record_topk / multi-step) are stacked into
(N, B) tensors as BlockDecoder records them; they need every row admitted at once. Leaving the
iteration early cancels the rows still running, so the engine's slots come back.

Usage:
    run = EngineBatch(engine, prompts, RowMode("onestep", 8), max_new_tokens=160)
    for ev in run.events(): ...
    run.forwards[i], run.stats.prefill_s, run.stats.decode_s
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from echo_ray.decode.blockwise import BlockEvent, BlockTrace, DecodeStats
from echo_ray.decode.engine import DecodeEngine, RowEvent, RowMode, RowRequest
from echo_ray.model.prompt import StudyPrompt


class EngineBatch:
    """One batch of prompts decoded on an engine (one mode; a shared or per-row token budget)."""

    def __init__(self, engine: DecodeEngine, prompts: list[StudyPrompt], mode: RowMode,
                 max_new_tokens: int | list[int]):  # fmt: skip
        n = len(prompts)
        budgets = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        if len(budgets) != n:
            raise ValueError(f"{len(budgets)} budgets for {n} prompts")
        self.engine, self.mode = engine, mode
        self.requests = [RowRequest(p, mode, b, tag=i) for i, (p, b) in enumerate(zip(prompts, budgets))]
        for req in self.requests:
            engine.check(req)  # every row is refused before any compute
        self.traced = self.needs_all_rows(mode)
        if self.traced and n > engine.cfg.max_rows:
            raise ValueError(f"traced decoding needs all {n} rows in slots at once; decode.slots.max_rows is "
                             f"{engine.cfg.max_rows}")  # fmt: skip
        self.stats = DecodeStats()
        self.forwards = [0] * n
        self._running: set[int] = set()

    @staticmethod
    def needs_all_rows(mode: RowMode) -> bool:
        """Traced modes (top-k records, multi-step commit steps) stack every row's trace per event."""
        return bool(mode.record_topk) or mode.kind == "multistep"

    def events(self) -> Iterator[BlockEvent]:
        eng, n = self.engine, len(self.requests)
        f0, p0, d0 = eng.stats.forwards, eng.stats.prefill_s, eng.stats.decode_s
        queue = list(range(n))
        done, hit = [False] * n, [False] * n
        index = 0
        try:
            while not all(done):
                if queue and eng.free_slots:
                    take, queue = queue[: eng.free_slots], queue[eng.free_slots :]
                    self._running.update(eng.admit([self.requests[i] for i in take]))
                mine = [ev for ev in eng.step() if ev.row in self._running]
                tokens: list[list[int]] = [[] for _ in range(n)]
                for ev in mine:
                    tokens[ev.tag] = ev.tokens
                    done[ev.tag] |= ev.finished
                    hit[ev.tag] |= ev.hit_max
                    self.forwards[ev.tag] = ev.forwards
                    if ev.finished:
                        self._running.discard(ev.row)
                self.stats.forwards = eng.stats.forwards - f0
                self.stats.prefill_s, self.stats.decode_s = eng.stats.prefill_s - p0, eng.stats.decode_s - d0
                if not mine:
                    continue
                steps = max(ev.steps for ev in mine)
                trace = self._stack(mine, n) if self.traced else None
                yield BlockEvent(index, tokens, list(done), list(hit), steps, trace)
                index += 1
        finally:
            for row in sorted(self._running):
                eng.cancel(row)
            self._running.clear()

    def _stack(self, mine: list[RowEvent], n: int) -> BlockTrace:
        """(N, B) trace tensors; rows not in this step are all-fixed zeros (records skip them)."""
        first = mine[0].trace
        by_tag = {ev.tag: ev.trace for ev in mine}

        def pick(name: str, fill_fixed: bool = False) -> torch.Tensor | None:
            if getattr(first, name) is None:
                return None
            parts = []
            for i in range(n):
                tr = by_tag.get(i)
                if tr is not None:
                    parts.append(getattr(tr, name))
                else:
                    blank = torch.zeros_like(getattr(first, name))
                    parts.append(blank.fill_(True) if fill_fixed else blank)
            return torch.cat(parts)

        return BlockTrace(pick("tokens"), pick("fixed", True), pick("commit_step"), pick("topk_ids"),
                          pick("topk_logprobs"))  # fmt: skip

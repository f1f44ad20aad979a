"""Run a list of prompts through a DecodeEngine and report batch-level `BlockEvent`s like BlockDecoder.

The adapter behind `ReportGenerator` (decode.engine: static) and the DCD teacher: it submits the
rows to a `Scheduler` (decode/scheduler.py, the engine's one driver, here run synchronously: as
many rows as there are free slots are admitted, the rest as rows finish), steps it
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

import math
from collections.abc import Iterator

import torch

from echo_ray.decode.engine import DecodeEngine, RowEvent, RowMode, RowRequest
from echo_ray.decode.events import BlockEvent, BlockTrace, DecodeStats
from echo_ray.decode.scheduler import BlockUpdate, Failure, Scheduler, Update
from echo_ray.errors import InputError
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

    @staticmethod
    def needs_all_rows(mode: RowMode) -> bool:
        """Traced modes (top-k records, multi-step commit steps) stack every row's trace per event."""
        return bool(mode.record_topk) or mode.kind == "multistep"

    def events(self) -> Iterator[BlockEvent]:
        eng, n = self.engine, len(self.requests)
        f0, p0, d0 = eng.stats.forwards, eng.stats.prefill_s, eng.stats.decode_s
        sched = Scheduler(eng, max_queue=n)  # the engine's one driver; here run synchronously
        got: list[Update] = []
        tickets = [sched.submit(req, got.append, deadline=math.inf) for req in self.requests]
        done, hit = [False] * n, [False] * n
        index = 0
        try:
            while sched.busy:
                got.clear()
                sched.run_once()
                for u in got:
                    if isinstance(u, Failure):  # every row was checked above: a refusal here is a bug
                        raise (InputError if u.reason == "invalid" else RuntimeError)(u.message)
                mine = [u.event for u in got if isinstance(u, BlockUpdate)]
                tokens: list[list[int]] = [[] for _ in range(n)]
                for ev in mine:
                    tokens[ev.tag] = ev.tokens
                    done[ev.tag] |= ev.finished
                    hit[ev.tag] |= ev.hit_max
                    self.forwards[ev.tag] = ev.forwards
                self.stats.forwards = eng.stats.forwards - f0
                self.stats.prefill_s, self.stats.decode_s = eng.stats.prefill_s - p0, eng.stats.decode_s - d0
                if not mine:
                    continue
                steps = max(ev.steps for ev in mine)
                trace = self._stack(mine, n) if self.traced else None
                yield BlockEvent(index, tokens, list(done), list(hit), steps, trace)
                index += 1
        finally:  # left early (or failed): the rows still queued or running give their slots back
            for t in tickets:
                sched.cancel(t)
            sched.retire()

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

"""The replica's side of continuous batching: requests become scheduler rows, rows become answers.

`ContinuousDecoder` wraps a `Scheduler` (scheduler.py) for async HTTP handlers: `open` builds the
row's prompt off the event loop, checks its length (422 before a stream's status line goes out),
and submits it (429 with a Retry-After estimate when the queue is full). The returned `RowHandle`
awaits the row's block updates through an asyncio queue that the scheduler thread feeds with
`loop.call_soon_threadsafe`, accumulates tokens, and builds the same `GeneratedReport` the local
decoder returns. A plain (non-streaming) request has no use for its blocks until the last one, so
its handle keeps them on the scheduler thread and hands them over with the final block (or a
failure) in one wake-up of the event loop instead of one per block: under load the loop thread
then competes less with the scheduler for the interpreter. A handler that is cancelled (client
gone) calls `handle.cancel()` in a `finally`.

Usage:
    dec = ContinuousDecoder(gen, gen.engine, max_queue=64, timeout_s=60.0); dec.start()
    handle = await dec.open(images, "en", "onestep", 96, deadline)
    while (ev := await handle.next_block()) is not None: ...      # RowEvent per block
    handle.report()                                               # GeneratedReport
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from dataclasses import replace

from PIL import Image

from echo_ray.decode.engine import DecodeEngine, RowEvent, RowMode, RowRequest
from echo_ray.decode.generator import GeneratedReport, ReportGenerator, resolve_decode
from echo_ray.errors import InputError
from echo_ray.serve.scheduler import BlockUpdate, Failure, QueueFull, Scheduler, Ticket
from echo_ray.serve.schemas import ApiError

FAILURE_STATUS = {"deadline": 503, "invalid": 422, "internal": 500, "shutdown": 503}


class Overloaded(ApiError):
    """429: the admission queue is full; `retry_after_s` goes out as the Retry-After header."""

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(429, message)
        self.retry_after_s = retry_after_s


class RowHandle:
    """One request's row: its block events in order, then its report."""

    def __init__(self, dec: "ContinuousDecoder", mode: str, block_size: int, t0: float, streaming: bool = True):
        self._dec, self.mode, self.block_size, self._t0 = dec, mode, block_size, t0
        self.streaming = streaming
        self._updates: asyncio.Queue = asyncio.Queue()  # lists of updates, in order
        self._held: list = []  # scheduler thread only: blocks of a plain request not yet handed over
        self._ready: deque = deque()  # event loop only: handed-over updates not yet consumed
        self._loop = asyncio.get_running_loop()
        self.ticket: Ticket | None = None
        self.tokens: list[int] = []
        self.forwards = 1  # the prefill
        self.blocks = 0
        self.rows_in_step = 0  # the most rows that shared a step with this one
        self.hit_max = False
        self.finished = False

    def sink(self, update) -> None:  # scheduler thread
        if not self.streaming and isinstance(update, BlockUpdate) and not update.event.finished:
            self._held.append(update)
            return
        batch, self._held = [*self._held, update], []
        self._loop.call_soon_threadsafe(self._updates.put_nowait, batch)

    async def next_block(self) -> RowEvent | None:
        """The next block event; None after the last; ApiError on a deadline or decode failure."""
        if self.finished:
            return None
        if not self._ready:
            self._ready.extend(await self._updates.get())
        update = self._ready.popleft()
        if isinstance(update, Failure):
            self.finished = True
            if update.reason == "deadline":
                msg = f"decode did not finish within the limit of {self._dec.timeout_s:g} s ({update.message}); lower max_new_tokens"
                raise ApiError(503, msg)
            raise ApiError(FAILURE_STATUS[update.reason], update.message)
        assert isinstance(update, BlockUpdate)
        ev = update.event
        self.tokens.extend(ev.tokens)
        self.forwards += ev.steps
        self.blocks += 1
        self.rows_in_step = max(self.rows_in_step, update.rows_in_step)
        self.hit_max, self.finished = ev.hit_max, ev.finished
        return ev

    async def wait(self) -> GeneratedReport:
        while await self.next_block() is not None:
            pass
        return self.report()

    def cancel(self) -> None:
        if self.ticket is not None and not self.finished:
            self._dec.scheduler.cancel(self.ticket)

    def text(self) -> str:
        return self._dec.tokenizer.decode(self.tokens, skip_special_tokens=True)

    def report(self) -> GeneratedReport:
        latency = time.perf_counter() - self._t0
        return GeneratedReport.from_tokens(
            self._dec.tokenizer, self.tokens, hit_max_length=self.hit_max, forward_passes=self.forwards,
            prefill_s=0.0, decode_s=latency, latency_s=latency, mode=self.mode, block_size=self.block_size,
        )  # fmt: skip


class ContinuousDecoder:
    """Scheduler + engine behind async handlers; prompts and modes come from a `ReportGenerator`."""

    def __init__(self, gen: ReportGenerator, engine: DecodeEngine, max_queue: int, timeout_s: float, metrics=None):
        self.gen, self.engine, self.timeout_s, self.metrics = gen, engine, timeout_s, metrics
        self.tokenizer = gen.tokenizer
        self.scheduler = Scheduler(engine, max_queue, on_step=metrics.on_step if metrics else None)
        if metrics is not None:
            metrics.bind(self.scheduler)
        self._modes: dict[str, tuple[RowMode, int]] = {}

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.close()

    def mode(self, name: str) -> tuple[RowMode, int]:
        """(RowMode, block size) for a request mode, resolved against the checkpoint once."""
        if name not in self._modes:
            cfg = resolve_decode(self.gen.ckpt, replace(self.gen.cfg, mode=name), self.gen.override_block)
            self._modes[name] = (RowMode.from_decode(cfg), int(cfg.block_size or 1))
        return self._modes[name]

    def request(self, images: list[Image.Image], language: str, mode: str, budget: int, tag=None) -> RowRequest:
        """Build and check one row (CPU work: call off the event loop). InputError when too long."""
        row_mode, _ = self.mode(mode)
        (prompt,) = self.gen.prompts([images], language)
        self.gen.check_fits(prompt.length, budget, self.gen.cfg)  # the engine's slots are the generator's
        return RowRequest(prompt=prompt, mode=row_mode, max_new_tokens=budget, tag=tag)

    async def open(self, images: list[Image.Image], language: str, mode: str, budget: int, deadline: float,
                   tag=None, streaming: bool = True) -> RowHandle:  # fmt: skip
        """Submit one request; ApiError 422 (too long) or Overloaded (429) before any decoding.
        `streaming` False: the blocks arrive together with the last one (plain requests)."""
        t0 = time.perf_counter()
        try:
            req = await asyncio.to_thread(self.request, images, language, mode, budget, tag)
        except InputError as e:
            raise ApiError(422, str(e)) from None
        handle = RowHandle(self, mode, self.mode(mode)[1], t0, streaming)
        try:
            handle.ticket = self.scheduler.submit(req, handle.sink, deadline)
        except QueueFull as e:
            if self.metrics is not None:
                self.metrics.on_rejected()
            raise Overloaded(f"server busy: {e}", e.retry_after_s) from None
        return handle

    def warmup(self, images: list[Image.Image], budget: int) -> None:
        """Decode one request synchronously on the calling thread (before `start`)."""
        done: list = []
        req = self.request(images, "en", self.gen.cfg.mode, budget)
        self.scheduler.submit(req, done.append, time.monotonic() + 600)
        while not any(isinstance(u, Failure) or u.event.finished for u in done):
            if self.scheduler.run_once() == 0 and not done:
                raise RuntimeError("warm-up decode made no progress")
        if isinstance(done[-1], Failure):
            raise RuntimeError(f"warm-up decode failed: {done[-1].message}")

"""The engine replica's side of continuous batching: ready rows in, block updates out (no Serve here).

`EngineCore` owns a `Scheduler` (echo_ray.decode.scheduler) running on its own thread over one
`DecodeEngine`. `run(row, timeout_s, streaming)` is an async generator for the deployment's
handle stream: it refuses a row the engine cannot take (`Refused(422)`: too long, a block longer
than the prompt's text tail) or a full queue (`Refused(429, retry_after_s)`) before any decoding,
then yields lists of `BlockUpdate`/`Failure` as the scheduler thread hands them over (through
`loop.call_soon_threadsafe`). A stream gets `Accepted()` first and then one list per block (blocks
already waiting go out together, so a loaded replica sends fewer messages); a
plain request's blocks stay on the scheduler thread and come over together with the last one (one
wake-up of the event loop and one message). A caller that goes away (its generator closed or
cancelled) frees the row's slot at the next block edge. Rows carry token ids and tensors only.

`engine_cpu` counts the process CPU time spent inside model calls (`admit`: vision + prefill,
`step`: the block forwards) so the benchmark can report the replica's CPU outside them.

Usage:
    core = EngineCore(engine, max_queue=64); core.warmup(row); core.start()
    async for msg in core.run(row, timeout_s=60.0, streaming=True): ...  # Accepted | Refused | list[Update]
    updates = await core.whole(row, timeout_s=60.0)                      # Refused | list[Update] (plain)
    core.snapshot(); core.close()
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, replace

from echo_ray.decode.engine import DecodeEngine, RowRequest
from echo_ray.decode.scheduler import BlockUpdate, Failure, QueueFull, Scheduler, Update
from echo_ray.errors import InputError


@dataclass
class Accepted:
    """A streamed row is queued: the ingress may send its 200 status line."""


@dataclass
class Refused:
    """The row was not queued: HTTP `status` (422 or 429) and a message; Retry-After for 429."""

    status: int
    message: str
    retry_after_s: int = 0


Message = Accepted | Refused | list[Update]


class TimedEngine:
    """The engine with the process CPU time of its model calls counted (everything else passes through)."""

    def __init__(self, engine: DecodeEngine):
        self._engine, self.model_cpu_s = engine, 0.0

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def admit(self, requests):
        t0 = time.process_time()
        try:
            return self._engine.admit(requests)
        finally:
            self.model_cpu_s += time.process_time() - t0

    def step(self):
        t0 = time.process_time()
        try:
            return self._engine.step()
        finally:
            self.model_cpu_s += time.process_time() - t0


class RowChannel:
    """One row's updates, from the scheduler thread (`sink`) to the event loop (`get`)."""

    def __init__(self, streaming: bool):
        self.streaming = streaming
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue = asyncio.Queue()
        self._held: list[Update] = []  # scheduler thread only: a plain row's blocks not yet handed over

    def sink(self, update: Update) -> None:  # scheduler thread
        if isinstance(update, BlockUpdate):
            update = BlockUpdate(replace(update.event, trace=None), update.rows_in_step)  # tokens only
            if not self.streaming and not update.event.finished:
                self._held.append(update)
                return
        batch, self._held = [*self._held, update], []
        self._loop.call_soon_threadsafe(self._queue.put_nowait, batch)

    async def get(self) -> list[Update]:
        """The next updates; everything already handed over goes in one message (fewer under load)."""
        batch = await self._queue.get()
        while not self._queue.empty():
            batch = batch + self._queue.get_nowait()
        return batch


def _last(batch: list[Update]) -> bool:
    u = batch[-1]
    return isinstance(u, Failure) or u.event.finished


class EngineCore:
    """Scheduler thread + engine behind the engine deployment's async generator (module docstring)."""

    def __init__(self, engine: DecodeEngine, max_queue: int, metrics=None):
        self.engine = TimedEngine(engine)
        self.metrics = metrics
        self.scheduler = Scheduler(self.engine, max_queue, on_step=metrics.on_step if metrics else None)
        if metrics is not None:
            metrics.bind(self.scheduler)
        self.served = 0
        self._cpu0 = time.process_time()

    def start(self) -> None:
        self.scheduler.start()

    def close(self) -> None:
        self.scheduler.close()

    def refuse(self, row: RowRequest) -> Refused | None:
        """The engine's own checks of a row (before queueing): 422 naming the problem, else None."""
        try:
            self.engine.check(row)
        except (InputError, ValueError) as e:
            return Refused(422, str(e))
        return None

    async def run(self, row: RowRequest, timeout_s: float, streaming: bool) -> AsyncIterator[Message]:
        refused = self.refuse(row)
        if refused is not None:
            yield refused
            return
        channel = RowChannel(streaming)
        try:
            ticket = self.scheduler.submit(row, channel.sink, time.monotonic() + timeout_s)
        except QueueFull as e:
            if self.metrics is not None:
                self.metrics.on_rejected()
            yield Refused(429, f"server busy: {e}", e.retry_after_s)
            return
        try:
            if streaming:
                yield Accepted()
            while True:
                batch = await channel.get()
                yield batch
                if _last(batch):
                    self.served += 1
                    return
        finally:  # the caller went away (generator closed or cancelled): free the slot at the next edge
            self.scheduler.cancel(ticket)

    async def whole(self, row: RowRequest, timeout_s: float) -> Refused | list[Update]:
        """A plain row in one answer: its refusal, or all its updates (the last one finished or a Failure)."""
        updates: list[Update] = []
        async with aclosing(self.run(row, timeout_s, streaming=False)) as messages:
            async for msg in messages:
                if isinstance(msg, Refused):
                    return msg
                updates.extend(msg)
        return updates

    def warmup(self, row: RowRequest) -> None:
        """Decode one row synchronously on the calling thread (before `start`)."""
        done: list[Update] = []
        self.scheduler.submit(row, done.append, time.monotonic() + 600)
        while not any(isinstance(u, Failure) or u.event.finished for u in done):
            if self.scheduler.run_once() == 0 and not done:
                raise RuntimeError("warm-up decode made no progress")
        if isinstance(done[-1], Failure):
            raise RuntimeError(f"warm-up decode failed: {done[-1].message}")
        self._cpu0, self.engine.model_cpu_s = time.process_time(), 0.0  # count served requests only

    def snapshot(self) -> dict:
        """The scheduler's figures plus this process's CPU seconds in and outside model calls."""
        cpu = time.process_time() - self._cpu0
        return {**self.scheduler.snapshot(), "served": self.served, "process_cpu_s": round(cpu, 4),
                "model_cpu_s": round(self.engine.model_cpu_s, 4)}  # fmt: skip

"""Continuous block-level batching: the one driver of a `DecodeEngine` (no Ray, no Serve here).

The serving engine deployment runs it on its own thread (`start`); `EngineBatch` (ReportGenerator,
evaluation, the DCD teacher) drives the same scheduler synchronously with `run_once`.

Requests wait in a bounded admission queue. At every block edge `run_once` (1) frees the slots of
cancelled rows and of rows past their deadline, (2) admits waiting requests into free slots (one
`engine.admit` call: vision + prefill), (3) runs one engine step (one block for every running row
of one mode group; groups that cannot share a step take turns inside the engine), and (4) hands each
row its block event through the row's `sink`. Finished rows leave their slots in the same step, so a
new request waits at most one block for a slot, never for a whole batch. Plain and streaming requests
are the same kind of row; language and `max_new_tokens` are per row and never split a step. This is
the per-step admission of vLLM / SGLang, at block granularity (SGLang's diffusion-LM path).

Threads: `submit` and `cancel` are called from the server's event loop; everything that touches the
engine runs on the scheduler's own thread (`start`). A sink is called on that thread and must only
hand the update over (e.g. `loop.call_soon_threadsafe`); a sink that raises cancels its row.

Usage:
    sched = Scheduler(engine, max_queue=64, on_step=metrics.observe)
    sched.start()                                   # daemon thread running run_once at every edge
    ticket = sched.submit(RowRequest(prompt, mode, 96, tag=rid), sink, deadline=time.monotonic() + 60)
    sched.cancel(ticket)                            # client gone: slot freed at the next block edge
    sched.snapshot()                                # slots in use, queue length, rows per step, counters
    sched.close()
    # synchronous (EngineBatch): submit rows, then `while sched.busy: sched.run_once()`
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from echo_ray.decode.engine import EngineFull, RowEvent, RowRequest
from echo_ray.errors import InputError

logger = logging.getLogger(__name__)

FailureReason = Literal["deadline", "invalid", "internal", "shutdown"]


class QueueFull(Exception):
    """`submit` refused: the admission queue holds `limit` requests already."""

    def __init__(self, queued: int, limit: int, retry_after_s: int):
        super().__init__(f"admission queue full ({queued} of {limit} waiting); retry in {retry_after_s} s")
        self.queued, self.limit, self.retry_after_s = queued, limit, retry_after_s


@dataclass
class BlockUpdate:
    """One finished block of a row; `rows_in_step` rows decoded in the step that produced it."""

    event: RowEvent
    rows_in_step: int


@dataclass
class Failure:
    """The row's terminal error: it will get no more updates."""

    reason: FailureReason
    message: str


Update = BlockUpdate | Failure


@dataclass(eq=False)
class Ticket:
    """A submitted request: queued until admitted, then running in engine row `row`."""

    request: RowRequest
    sink: Callable[[Update], None]
    deadline: float  # clock() value after which the row ends with Failure("deadline")
    submitted: float
    row: int | None = None
    admitted: float | None = None
    cancelled: bool = False
    done: bool = False


@dataclass
class SchedulerStats:
    steps: int = 0
    rows_per_step: Counter = field(default_factory=Counter)
    admitted: int = 0
    finished: int = 0
    cancelled: int = 0
    expired: int = 0
    rejected: int = 0
    invalid: int = 0
    failed: int = 0
    row_seconds: float = 0.0  # moving average, admission to last block

    def as_dict(self) -> dict:
        n = sum(self.rows_per_step.values())
        mean = sum(k * v for k, v in self.rows_per_step.items()) / n if n else 0.0
        return {
            "steps": self.steps, "rows_per_step": {str(k): v for k, v in sorted(self.rows_per_step.items())},
            "mean_rows_per_step": round(mean, 3), "max_rows_per_step": max(self.rows_per_step, default=0),
            "admitted": self.admitted, "finished": self.finished, "cancelled": self.cancelled,
            "expired": self.expired, "rejected": self.rejected, "invalid": self.invalid, "failed": self.failed,
            "mean_row_s": round(self.row_seconds, 4),
        }  # fmt: skip


class Scheduler:
    """Bounded queue + block-edge admission over one engine. See the module docstring."""

    def __init__(self, engine, max_queue: int, on_step: Callable[[int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):  # fmt: skip
        if max_queue < 0:
            raise ValueError(f"max_queue must be >= 0, got {max_queue}")
        self.engine, self.max_queue, self.on_step, self.clock = engine, max_queue, on_step, clock
        self.slots = int(engine.free_slots) + int(engine.running)
        self.stats = SchedulerStats()
        self._cond = threading.Condition()
        self._queue: deque[Ticket] = deque()
        self._running: dict[int, Ticket] = {}
        self._closed = False
        self._thread: threading.Thread | None = None

    # ---- called from any thread -------------------------------------------------------------
    def submit(self, request: RowRequest, sink: Callable[[Update], None], deadline: float) -> Ticket:
        """Queue a row; QueueFull when `max_queue` requests are already waiting."""
        with self._cond:
            if self._closed:
                raise RuntimeError("scheduler is closed")
            if len(self._queue) >= self.max_queue:
                self.stats.rejected += 1
                raise QueueFull(len(self._queue), self.max_queue, self._retry_after())
            ticket = Ticket(request, sink, deadline, self.clock())
            self._queue.append(ticket)
            self._cond.notify()
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        """The caller is gone: drop a queued row now, free a running row's slot at the next edge."""
        with self._cond:
            if ticket.done or ticket.cancelled:
                return
            ticket.cancelled = True
            self.stats.cancelled += 1
            if ticket.row is None and ticket in self._queue:
                self._queue.remove(ticket)
                ticket.done = True
            self._cond.notify()

    @property
    def busy(self) -> bool:
        """Rows are queued or running (synchronous drivers loop on `run_once` while this holds)."""
        with self._cond:
            return bool(self._queue or self._running)

    def snapshot(self) -> dict:
        with self._cond:
            return {"slots": self.slots, "slots_in_use": len(self._running), "queue_length": len(self._queue),
                    "max_queue": self.max_queue, **self.stats.as_dict()}  # fmt: skip

    def _retry_after(self) -> int:
        """Seconds until a queue place is likely free: the queue drains `slots` rows per row lifetime."""
        per_row = self.stats.row_seconds or 1.0
        return int(min(60, max(1, math.ceil(per_row * (len(self._queue) + 1) / max(1, self.slots)))))

    # ---- the scheduler thread -----------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._loop, name="echo-scheduler", daemon=True)
        self._thread.start()
        return self._thread

    def close(self, timeout_s: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout_s)
        else:
            self._fail_all("shutdown", "service is shutting down")

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._queue and not self._running:
                    self._cond.wait()
                if self._closed:
                    break
            try:
                self.run_once()
            except Exception:  # a bug must not kill the loop: fail what is in flight and go on
                logger.exception("scheduler step failed")
                self._fail_all("internal", "internal error in the decode loop")
        self._fail_all("shutdown", "service is shutting down")

    def run_once(self) -> int:
        """One block edge: retire, admit, step. Returns the rows decoded in this step (0 if idle)."""
        self.retire()
        self._admit()
        return self._step()

    def retire(self) -> None:
        """Free the slots of cancelled and late rows now (also called at every block edge)."""
        now = self.clock()
        with self._cond:
            gone = [t for t in self._running.values() if t.cancelled or now > t.deadline]
            for t in gone:
                del self._running[t.row]
                t.done = True
            late = [t for t in self._queue if now > t.deadline]
            for t in late:
                self._queue.remove(t)
                t.done = True
            self.stats.expired += sum(not t.cancelled for t in gone) + len(late)
        for t in gone:
            self.engine.cancel(t.row)
        for t in [t for t in gone if not t.cancelled] + late:
            waited = "in the queue" if t.row is None else "decoding"
            self._deliver(t, Failure("deadline", f"time limit reached while {waited}"))

    def _admit(self) -> None:
        with self._cond:
            n = min(int(self.engine.free_slots), len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
        if not batch:
            return
        try:
            rows = self.engine.admit([t.request for t in batch])
        except EngineFull:
            with self._cond:
                self._queue.extendleft(reversed(batch))
            return
        except (InputError, ValueError):
            # Some request is at fault (prompt + budget over the slot length, a block longer than the
            # prompt's text tail): the engine checks all before any compute, so admit each alone.
            for t in batch:
                self._admit_one(t)
            return
        except Exception:
            logger.exception("admission of %d rows failed", len(batch))
            for t in batch:
                self._finish(t, Failure("internal", "internal error while starting the decode"))
            return
        self._place(list(zip(batch, rows)))

    def _admit_one(self, t: Ticket) -> None:
        try:
            (row,) = self.engine.admit([t.request])
        except (InputError, ValueError) as e:
            self.stats.invalid += 1
            self._finish(t, Failure("invalid", str(e)))
            return
        self._place([(t, row)])

    def _place(self, placed: list[tuple[Ticket, int]]) -> None:
        now = self.clock()
        with self._cond:
            for t, row in placed:
                t.row, t.admitted = row, now
                self._running[row] = t  # a cancel that raced admission is retired at the next edge
            self.stats.admitted += len(placed)

    def _step(self) -> int:
        if not self.engine.has_work:
            return 0
        t0 = time.perf_counter()
        events = self.engine.step()
        seconds = time.perf_counter() - t0
        n = len(events)
        now = self.clock()
        with self._cond:
            self.stats.steps += 1
            self.stats.rows_per_step[n] += 1
            owners = [(ev, self._running.get(ev.row)) for ev in events]
            for ev, t in owners:
                if t is not None and ev.finished:
                    del self._running[ev.row]
                    t.done = True
                    self.stats.finished += 1
                    life = now - (t.admitted or now)
                    self.stats.row_seconds = life if not self.stats.row_seconds else 0.8 * self.stats.row_seconds + 0.2 * life
        for ev, t in owners:
            if t is not None and not t.cancelled:
                self._deliver(t, BlockUpdate(ev, n))
        if self.on_step is not None:
            self.on_step(n, seconds)
        return n

    # ---- helpers ----------------------------------------------------------------------------------
    def _deliver(self, t: Ticket, update: Update) -> None:
        try:
            t.sink(update)
        except Exception:  # the caller's side is gone (closed loop): stop decoding for it
            logger.warning("row %s: sink failed; cancelling", t.row, exc_info=True)
            self.cancel(t)

    def _finish(self, t: Ticket, failure: Failure) -> None:
        with self._cond:
            t.done = True
        self._deliver(t, failure)

    def _fail_all(self, reason: FailureReason, message: str) -> None:
        with self._cond:
            tickets = list(self._running.values()) + list(self._queue)
            self._running.clear()
            self._queue.clear()
            self.stats.failed += len(tickets)
        for t in tickets:
            if t.row is not None:
                try:
                    self.engine.cancel(t.row)
                except Exception:
                    logger.exception("cancel of row %s failed", t.row)
            t.done = True
            if not t.cancelled:
                self._deliver(t, Failure(reason, message))

"""The driver-side feeder: teacher results -> Parquet + per-worker `Step` messages, with metrics.

It runs in a thread beside `TorchTrainer.fit()`. It pulls `TeacherResult`s (from `TeacherPool.map`
or a Parquet replay), writes each result's records to the trajectory store, groups records into
global steps (`StepPacker`), and puts one `Step` per step into every worker's bounded queue. A
put on a full queue blocks, which is the back-pressure (see `stream`). Rounds are closed in order:
a round ends when all of its tasks came back as records or failures; results of a later round that
complete early wait (bounded by the pool's in-flight window).

With a `packet_log` (stream.PacketLog) every Step and RoundEnd is logged, by uid, before it is
put, so a restarted train worker group can replay what the dead one had taken (worker.py).

Failed studies (unreadable images) are reported through `on_failures`, which queues spares; the
round then waits for `expected` records. Without it, failures count toward closing the round.

Metrics per round (sent to the workers in the `RoundEnd` message and appended to
`<output>/teacher_metrics.jsonl`): records, failures (with reasons), teacher tokens, busy seconds,
records/s and tokens/s over the round's wall time less the seconds the feeder was blocked on full
queues (the teachers get no new work while it is: this is their own rate, not the trainer's start-up;
`teacher_records_per_s_wall` keeps the plain wall rate), queue depth (mean/max over puts, in packets
per worker queue), and those blocked seconds.

Usage:
    feeder = Feeder(results, expected={0: 64, 1: 64}, queues=qs, batch_size=4, writer=w, log_path=p)
    feeder.start(); ...; report = feeder.join()        # re-raises a feeder failure
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from echo_ray.train.dcd.messages import Failed, Message, RoundEnd, Step, Stop
from echo_ray.train.dcd.store import TrajectoryWriter
from echo_ray.train.dcd.stream import PacketLog, StepPacker
from echo_ray.train.dcd.trajectory import TrajectoryRecord

log = logging.getLogger(__name__)


class _RoundStats:
    def __init__(self, expected: int, failures_count: bool):
        self.expected, self.records, self.tokens, self.busy_s = expected, 0, 0, 0.0
        self.failures_count = failures_count  # False when failed studies are replaced by spares
        self.failures: list[tuple[str, str]] = []
        self.first_at: float | None = None
        self.last_at = 0.0
        self.depths: list[float] = []
        self.blocked_s = 0.0
        self.steps = 0

    @property
    def done(self) -> bool:
        return self.records + (len(self.failures) if self.failures_count else 0) >= self.expected

    def summary(self, round_index: int, started: float) -> dict:
        wall = max(self.last_at - (self.first_at or started), 1e-9)
        active = max(wall - self.blocked_s, 1e-9)  # blocked on full queues = the teachers were given no work
        decoded = self.busy_s > 0  # a review pass re-reads stored trajectories: no teacher ran, no rate
        return {
            "round": round_index, "records": self.records, "failures": len(self.failures),
            "failure_reasons": [f"{u}: {r}" for u, r in self.failures][:20], "teacher_tokens": self.tokens,
            "teacher_busy_s": self.busy_s, "teacher_records_per_s": self.records / active if decoded else None,
            "teacher_records_per_s_wall": self.records / wall if decoded else None, "teacher_wall_s": wall,
            "teacher_tokens_per_s": self.tokens / active if decoded else None, "queue_depth_mean": sum(self.depths) / max(1, len(self.depths)),
            "queue_depth_max": max(self.depths, default=0.0), "feeder_blocked_s": self.blocked_s, "steps": self.steps,
            "finished_at": time.time(),
        }  # fmt: skip


class Feeder:
    """Moves teacher results into the workers' queues, round by round, in a background thread."""

    def __init__(self, results: Iterable, expected: dict[int, int], queues: list, batch_size: int,
                 writer: TrajectoryWriter | None = None, log_path: str | Path | None = None, poll_s: float = 0.5,
                 on_failures: Callable[[int, list[tuple[str, str]]], None] | None = None,
                 packet_log: PacketLog | None = None):  # fmt: skip
        self.results, self.queues, self.writer, self.on_failures = results, queues, writer, on_failures
        self.packet_log = packet_log  # what was sent, so a restarted train worker group can replay it
        self.log_path = Path(log_path) if log_path else None
        self.packer = StepPacker(len(queues), batch_size)
        self.rounds = {r: _RoundStats(n, on_failures is None) for r, n in sorted(expected.items())}
        self.buffers: dict[int, list[TrajectoryRecord]] = {r: [] for r in self.rounds}
        self.order = sorted(self.rounds)
        self.poll_s = poll_s
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.summaries: list[dict] = []
        self.started = time.time()
        self.unassigned = 0
        self._thread = threading.Thread(target=self._run, name="dcd-feeder", daemon=True)
        self._step = 0

    def start(self) -> None:
        self.started = time.time()
        self._thread.start()

    def stop(self) -> None:
        self.stop_event.set()

    def join(self, timeout: float | None = None) -> list[dict]:
        self._thread.join(timeout)
        if self.error is not None:
            raise self.error
        return self.summaries

    def _try_put(self, q, packet: Message) -> bool:
        from ray.util.queue import Full

        if self.stop_event.is_set():
            raise InterruptedError("feeder stopped")
        try:
            q.put(packet, block=True, timeout=self.poll_s)
            return True
        except Full:
            return False

    def _put(self, packets: list[Message], stats: _RoundStats | None) -> None:
        """packets[w] into worker w's queue, blocking while it is full (the back-pressure)."""
        t0 = time.perf_counter()
        if self.packet_log is not None:
            self.packet_log.append(packets)  # before the put: a packet in a queue is always in the log
        for q, packet in zip(self.queues, packets):
            while not self._try_put(q, packet):
                pass
        if stats is not None:
            stats.blocked_s += time.perf_counter() - t0
            stats.depths.append(sum(q.qsize() for q in self.queues) / len(self.queues))

    def _broadcast(self, packet: Message) -> None:
        self._put([packet] * len(self.queues), None)

    def _emit_steps(self, steps: list[list[list[TrajectoryRecord]]], r: int) -> None:
        stats = self.rounds[r]
        for per_worker in steps:
            self._step += 1
            stats.steps += 1
            self._put([Step(r, self._step, tuple(records)) for records in per_worker], stats)

    def _close_ready_rounds(self) -> None:
        while self.order and self.rounds[self.order[0]].done:
            r = self.order.pop(0)
            self._emit_steps(self.packer.add(self.buffers.pop(r)), r)
            self._emit_steps(self.packer.end_round(), r)
            summary = self.rounds[r].summary(r, self.started)
            summary["carried_rows"] = self.packer.unassigned
            self.summaries.append(summary)
            if self.log_path:
                with open(self.log_path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(summary) + "\n")
            rate = summary["teacher_records_per_s"]
            log.info("DCD round %d collected: %d records, %d failures, %s", r, summary["records"], summary["failures"],
                     f"{rate:.2f} records/s" if rate is not None else "stored (review pass)")  # fmt: skip
            self._broadcast(RoundEnd(r, summary))

    def _accept(self, result) -> None:
        r = result.round_index
        if r not in self.rounds:
            raise RuntimeError(f"teacher result for unknown round {r}")
        st = self.rounds[r]
        now = time.time()
        st.first_at = st.first_at if st.first_at is not None else now
        st.last_at = now
        st.records += len(result.records)
        st.failures.extend(result.failures)
        if result.failures and self.on_failures is not None:
            self.on_failures(r, result.failures)  # queues spare studies before the pool asks for more work
        st.tokens += result.tokens
        st.busy_s += result.seconds
        if self.writer is not None and not result.stored:
            self.writer.write(result.records, r)
        self.buffers[r].extend(result.records)
        if self.order and r == self.order[0]:
            self._emit_steps(self.packer.add(self.buffers[r]), r)
            self.buffers[r] = []

    def _run(self) -> None:
        try:
            for result in self.results:
                if self.stop_event.is_set():
                    return
                self._accept(result)
                self._close_ready_rounds()
            self._close_ready_rounds()
            if self.order:
                raise RuntimeError(f"teacher results ended before rounds {self.order} were complete")
            self.unassigned = self.packer.unassigned
            if self.unassigned:
                log.warning("DCD: %d trajectory rows were left over after the last round (fewer than one per "
                            "worker) and were not trained on", self.unassigned)  # fmt: skip
            self._broadcast(Stop(self.unassigned))
        except InterruptedError:
            return
        except BaseException as e:  # noqa: BLE001 - forwarded to the workers and re-raised by join()
            self.error = e
            for q in self.queues:
                try:
                    q.put(Failed(f"{type(e).__name__}: {e}"), block=True, timeout=5)
                except Exception:  # noqa: BLE001 - the queue itself may be gone
                    pass

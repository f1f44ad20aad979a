"""Streaming DCD rows from the teacher pool to the Ray Train workers, with back-pressure.

Data-parallel workers must all run the same number of optimizer steps (their gradients are
averaged every step), so rows are not pulled from one shared queue. The driver-side `StepPacker`
groups rows into global steps of `num_workers * batch_size` rows and deals each step round-robin
into one micro-batch per worker; every worker's bounded queue (`ray.util.queue.Queue(maxsize)`)
receives one packet per step, so all workers see the same packet sequence. A full queue blocks the
feeder, which stops pulling results from the teacher pool, which stops submitting work: a fast
teacher never fills memory, a slow one shows up as trainer idle time.

Round ends: the last rows of a round must still give every worker at least one row, so the packer
holds a full step back until more rows arrive; at the round end the held step and the remainder go
out as one or two steps of at least `num_workers` rows. If a whole round has fewer rows than
workers (possible only when studies fail), they are carried into the next round; after the last
round they are reported as `unassigned` (counted, logged, never silent).

Packets are the typed messages of `messages`: a `Step` per worker and step, a `RoundEnd` (the
feeder's teacher metrics for that round) after a round's last step, then `Stop`; a feeder that
fails sends `Failed` so no worker waits forever.

Replay after a train worker dies: the feeder also appends every Step and RoundEnd it sends to a
`PacketLog` (JSON lines, steps by uid; the records are in the trajectory store). A restarted
worker group resumes from its last checkpoint (step s) and `replay_packets` rebuilds, for one
worker, every logged packet after s, in order; the live queue continues after them, skipping
every packet that was logged when the worker opened its stream (replayed now or trained before the
checkpoint; `messages.message_key`).

Usage:
    packer = StepPacker(num_workers=2, batch_size=4)
    steps = packer.add(rows); steps += packer.end_round()      # each step: list of per-worker row lists
    reader = PacketReader(queue); for packet in reader: ...     # reader.wait_s, reader.first_wait_s
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from echo_ray.train.dcd.messages import Failed, Message, RoundEnd, Step, Stop, unknown


def deal(rows: list, num_workers: int) -> list[list]:
    """Round-robin rows into one list per worker (sizes differ by at most one)."""
    return [rows[w::num_workers] for w in range(num_workers)]


class StepPacker:
    """Rows in, per-worker micro-batches out; every emitted step has >= num_workers rows."""

    def __init__(self, num_workers: int, batch_size: int):
        if num_workers < 1 or batch_size < 1:
            raise ValueError("num_workers and batch_size must be positive")
        self.W, self.bs = num_workers, batch_size
        self.pending: list = []

    @property
    def step_rows(self) -> int:
        return self.W * self.bs

    def add(self, rows: list) -> list[list[list]]:
        """Queue rows; emit full steps while at least one more full step stays behind."""
        self.pending.extend(rows)
        out = []
        while len(self.pending) >= 2 * self.step_rows:
            out.append(deal(self.pending[: self.step_rows], self.W))
            self.pending = self.pending[self.step_rows :]
        return out

    def end_round(self) -> list[list[list]]:
        """Flush the round: the held rows go out as 1-2 steps of >= W rows; fewer than W carry over."""
        rows, out = self.pending, []
        if len(rows) < self.W:
            return []  # carried into the next round (see `unassigned` for the last one)
        if len(rows) >= self.step_rows + self.W:
            out.append(deal(rows[: self.step_rows], self.W))
            rows = rows[self.step_rows :]
        out.append(deal(rows, self.W))
        self.pending = []
        return out

    @property
    def unassigned(self) -> int:
        return len(self.pending)


def planned_steps(rows_per_round: int, num_workers: int, batch_size: int) -> int:
    """Optimizer steps one round of `rows_per_round` rows gives (StepPacker's rule; no failures)."""
    packer = StepPacker(num_workers, batch_size)
    return len(packer.add(list(range(rows_per_round)))) + len(packer.end_round())


class PacketReader:
    """Iterates a worker's queue (Steps, RoundEnds) until Stop, timing how long the worker waited.

    A background thread keeps up to `prefetch` packets fetched ahead of the loop, so the queue
    actor's round trip (several ms per `get` on a busy node) overlaps the step being trained and
    only a teacher that is really behind shows up as wait time. Prefetched packets are off the Ray
    queue but in the feeder's packet log, so a restarted worker group replays them (`replay_packets`).
    """

    def __init__(self, queue, poll_s: float = 1.0, prefetch: int = 2):
        import queue as local_queue  # the stdlib module; `queue` here is the Ray queue

        if prefetch < 1:
            raise ValueError("prefetch must be at least 1")
        self.queue, self.poll_s = queue, poll_s
        self.wait_s = 0.0
        self.first_wait_s: float | None = None
        self.packets = 0
        self._ahead: local_queue.SimpleQueue = local_queue.SimpleQueue()
        self._room = threading.Semaphore(prefetch)  # packets taken off the Ray queue and not yet yielded
        self._thread: threading.Thread | None = None

    def _fetch(self) -> None:
        """Thread body: queue -> local buffer until Stop/Failed (a daemon: it dies with the worker process);
        a failing queue becomes a Failed message."""
        from ray.util.queue import Empty

        try:
            while True:
                self._room.acquire()
                while True:
                    try:
                        packet = self.queue.get(block=True, timeout=self.poll_s)
                        break
                    except Empty:
                        continue
                self._ahead.put(packet)
                if isinstance(packet, (Stop, Failed)):
                    return
        except Exception as e:  # noqa: BLE001 - e.g. the queue actor died: the loop must not wait forever
            self._ahead.put(Failed(f"reading the teacher queue failed: {type(e).__name__}: {e}"))

    def __iter__(self) -> Iterator[Step | RoundEnd]:
        if self._thread is None:
            self._thread = threading.Thread(target=self._fetch, name="dcd-packet-prefetch", daemon=True)
            self._thread.start()
        while True:
            t0 = time.perf_counter()
            packet = self._ahead.get()
            self._room.release()
            waited = time.perf_counter() - t0
            if self.first_wait_s is None:
                self.first_wait_s = waited
            else:
                self.wait_s += waited
            self.packets += 1
            match packet:
                case Stop():
                    return
                case Failed(reason=reason):
                    raise RuntimeError(f"DCD feeder failed: {reason}")
                case Step() | RoundEnd():
                    yield packet
                case _:
                    unknown(packet)


PACKETS_FILE = "packets.jsonl"


class PacketLog:
    """Append-only record of the packets sent to the workers, one JSON line per step or round end:
    {"kind": "step", "round", "step", "uids": [per worker]} or {"kind": "round_end", "round", "stats"}."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def append(self, packets: list[Message]) -> None:
        """`packets[w]` is what worker w gets; steps are logged by uid, round ends with their stats."""
        match packets[0]:
            case Step(round=r, step=step):
                entry = {"kind": "step", "round": r, "step": step,
                         "uids": [[rec.uid for rec in p.records] for p in packets]}  # fmt: skip
            case RoundEnd(round=r, stats=stats):
                entry = {"kind": "round_end", "round": r, "stats": stats}
            case Stop() | Failed():
                return
            case other:
                unknown(other)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")


def replay_packets(log_path: str | Path, records_by_uid, rank: int,
                   after_step: int) -> tuple[list[Step | RoundEnd], set[tuple]]:  # fmt: skip
    """Worker `rank`'s packets logged after step `after_step`, records looked up by uid, in order, and
    the keys (`messages.message_key`) of every packet logged so far.

    records_by_uid(uids) -> {uid: TrajectoryRecord} (the trajectory store). `after_step` 0: from the
    first packet (a fresh start, or a restart before the first checkpoint). Raises when the log lacks that step.
    A packet is logged before it is put, so whatever a queue holds now has one of the returned keys:
    the reader skips those (trained from the log now, or before the checkpoint).
    """
    path = Path(log_path)
    entries = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x] if path.is_file() else []
    at = [i for i, e in enumerate(entries) if e["kind"] == "step" and e["step"] == after_step]
    if after_step and not at:
        raise RuntimeError(f"{log_path} has no step {after_step}: cannot replay the DCD stream after it")
    tail = entries[at[0] + 1 :] if after_step else entries
    need = {u for e in tail if e["kind"] == "step" for u in e["uids"][rank]}
    records = records_by_uid(need) if need else {}
    return [_message(e, records, rank) for e in tail], {_entry_key(e) for e in entries}


def _message(entry: dict, records: dict, rank: int) -> Step | RoundEnd:
    """A logged packet back as the message worker `rank` got (`records`: the step's records by uid)."""
    if entry["kind"] == "step":
        return Step(entry["round"], entry["step"], tuple(records[u] for u in entry["uids"][rank]))
    if entry["kind"] == "round_end":
        return RoundEnd(entry["round"], entry["stats"])
    raise RuntimeError(f"unknown entry kind {entry['kind']!r} in the DCD packet log")


def _entry_key(entry: dict) -> tuple[str, int]:
    """`messages.message_key` of a logged packet, without reading its records."""
    return ("step", entry["step"]) if entry["kind"] == "step" else ("round_end", entry["round"])

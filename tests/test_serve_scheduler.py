"""The continuous-batching scheduler over the real DecodeEngine (tiny model, CPU, float32, no Ray)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace

import pytest
from PIL import Image
from serve_support import local_generator, phantom_pngs

from echo_ray.decode.engine import DecodeEngine, RowMode, RowRequest
from echo_ray.decode.generator import resolve_decode
from echo_ray.decode.scheduler import BlockUpdate, Failure, QueueFull, Scheduler

pytestmark = pytest.mark.timeout(300)


class Clock:
    """A settable monotonic clock, so deadlines are tested without sleeping."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def study(i: int) -> list[Image.Image]:
    return [Image.open(phantom_pngs()[i]).convert("RGB")]


def engine(max_rows: int, max_len: int = 2048) -> DecodeEngine:
    gen = local_generator()
    slots = replace(gen.cfg.slots, max_rows=max_rows, max_len=max_len)
    return DecodeEngine(gen.ckpt.model, gen.ckpt.mask_id, gen.ckpt.eos_id, slots)


def row(i: int, budget: int, language: str = "en", mode: str = "onestep") -> RowRequest:
    gen = local_generator()
    cfg = resolve_decode(gen.ckpt, replace(gen.cfg, mode=mode))
    (prompt,) = gen.prompts([study(i)], language)
    return RowRequest(prompt=prompt, mode=RowMode.from_decode(cfg), max_new_tokens=budget, tag=i)


def alone(i: int, budget: int, language: str = "en", mode: str = "onestep") -> list[int]:
    return local_generator().generate([study(i)], language, mode=mode, max_new_tokens=budget)[0].tokens


class Sink:
    def __init__(self):
        self.updates: list = []

    def __call__(self, update) -> None:
        self.updates.append(update)

    @property
    def tokens(self) -> list[int]:
        return [t for u in self.updates if isinstance(u, BlockUpdate) for t in u.event.tokens]

    @property
    def done(self) -> bool:
        return bool(self.updates) and (isinstance(self.updates[-1], Failure) or self.updates[-1].event.finished)


def drain(sched: Scheduler, sinks: list[Sink], limit: int = 500) -> None:
    for _ in range(limit):
        if all(s.done for s in sinks):
            return
        sched.run_once()
    raise AssertionError("rows did not finish")


def test_rows_join_at_block_edges_and_each_equals_its_lone_decode():
    # (image, budget, language, mode): budgets and languages differ per row, modes take turns.
    jobs = [(0, 8, "en", "onestep"), (1, 40, "zh", "onestep"), (2, 16, "en", "onestep"),
            (3, 24, "zh", "onestep"), (4, 12, "en", "ar"), (5, 16, "en", "multistep")]  # fmt: skip
    sched = Scheduler(engine(max_rows=3), max_queue=8)
    sinks = [Sink() for _ in jobs]
    for (i, budget, lang, mode), sink in zip(jobs, sinks):
        sched.submit(row(i, budget, lang, mode), sink, deadline=time.monotonic() + 300)
    assert sched.snapshot()["queue_length"] == len(jobs)
    sched.run_once()  # admits 3, decodes the first block of the first mode group
    snap = sched.snapshot()
    assert (snap["slots_in_use"], snap["queue_length"]) == (3, 3)
    drain(sched, sinks)
    for (i, budget, lang, mode), sink in zip(jobs, sinks):
        assert sink.tokens == alone(i, budget, lang, mode), (i, budget, lang, mode)
        blocks = [u.event.block for u in sink.updates]
        assert blocks == list(range(len(blocks))) and sink.updates[-1].event.finished
    snap = sched.snapshot()
    assert snap["max_rows_per_step"] == 3 and snap["mean_rows_per_step"] > 1
    assert (snap["admitted"], snap["finished"], snap["slots_in_use"], snap["queue_length"]) == (6, 6, 0, 0)


def test_a_waiting_request_takes_the_first_freed_slot_while_others_keep_decoding():
    sched = Scheduler(engine(max_rows=2), max_queue=4)
    short, long_, waiting = Sink(), Sink(), Sink()
    for r, s in ((row(0, 8), short), (row(1, 40), long_), (row(2, 16), waiting)):
        sched.submit(r, s, deadline=time.monotonic() + 300)
    while not short.done:  # rows 0 and 1 hold both slots; row 2 waits
        assert not waiting.updates
        sched.run_once()
    snap = sched.snapshot()
    assert (snap["slots_in_use"], snap["queue_length"]) == (1, 1)
    n_long = len(long_.updates)
    assert sched.run_once() == 2  # the waiting row joined the long one at the very next edge
    assert waiting.updates[0].event.block == 0 and len(long_.updates) == n_long + 1 and not long_.done
    drain(sched, [long_, waiting])
    assert waiting.tokens == alone(2, 16) and long_.tokens == alone(1, 40)


def test_cancel_frees_a_running_slot_at_the_next_edge_and_drops_a_queued_row():
    sched = Scheduler(engine(max_rows=1), max_queue=4)
    running, queued, after = Sink(), Sink(), Sink()
    t_run = sched.submit(row(0, 64), running, deadline=time.monotonic() + 300)
    t_queued = sched.submit(row(1, 16), queued, deadline=time.monotonic() + 300)
    sched.run_once()
    assert sched.snapshot()["slots_in_use"] == 1 and len(running.updates) == 1
    sched.cancel(t_queued)
    sched.cancel(t_run)
    assert sched.snapshot()["queue_length"] == 0
    sched.submit(row(2, 8), after, deadline=time.monotonic() + 300)
    assert sched.run_once() == 1  # the cancelled row's slot was freed before this step: the new row has it
    assert after.updates[0].event.block == 0
    drain(sched, [after])
    assert len(running.updates) == 1 and not queued.updates  # nothing more for either
    assert after.tokens == alone(2, 8)
    snap = sched.snapshot()
    assert (snap["cancelled"], snap["slots_in_use"], snap["finished"]) == (2, 0, 1)


def test_deadline_ends_running_and_queued_rows_with_a_failure_and_frees_the_slot():
    clock = Clock()
    sched = Scheduler(engine(max_rows=1), max_queue=4, clock=clock)
    slow, waiting = Sink(), Sink()
    sched.submit(row(0, 64), slow, deadline=clock.now + 5)
    sched.submit(row(1, 16), waiting, deadline=clock.now + 5)
    sched.run_once()
    clock.now += 10
    assert sched.run_once() == 0  # both expired at this edge; nothing left to decode
    assert isinstance(slow.updates[-1], Failure) and slow.updates[-1].reason == "deadline"
    assert waiting.updates == [Failure("deadline", "time limit reached while in the queue")]
    snap = sched.snapshot()
    assert (snap["expired"], snap["slots_in_use"], snap["queue_length"]) == (2, 0, 0)
    assert sched.engine.free_slots == 1


def test_full_queue_refuses_with_retry_after_and_accepts_once_drained():
    sched = Scheduler(engine(max_rows=1), max_queue=1)
    first, second = Sink(), Sink()
    sched.submit(row(0, 8), first, deadline=time.monotonic() + 300)
    with pytest.raises(QueueFull) as err:
        sched.submit(row(1, 8), second, deadline=time.monotonic() + 300)
    assert err.value.retry_after_s >= 1 and "1 of 1 waiting" in str(err.value)
    drain(sched, [first])
    sched.submit(row(1, 8), second, deadline=time.monotonic() + 300)
    drain(sched, [second])
    assert second.tokens == alone(1, 8) and sched.snapshot()["rejected"] == 1


def test_a_row_too_long_for_the_slots_fails_alone():
    prompt_len = row(0, 8).prompt.length
    sched = Scheduler(engine(max_rows=4, max_len=prompt_len + 24), max_queue=4)
    ok, too_long = Sink(), Sink()
    sched.submit(row(0, 16), ok, deadline=time.monotonic() + 300)
    sched.submit(row(1, 200), too_long, deadline=time.monotonic() + 300)
    drain(sched, [ok, too_long])
    assert isinstance(too_long.updates[-1], Failure) and too_long.updates[-1].reason == "invalid"
    assert ok.tokens == alone(0, 16) and sched.snapshot()["invalid"] == 1


def test_thread_loop_serves_submissions_and_close_fails_what_is_left():
    sched = Scheduler(engine(max_rows=2), max_queue=8)
    sched.start()
    done = threading.Event()
    sinks = [Sink() for _ in range(3)]
    for i, s in enumerate(sinks):
        sched.submit(row(i, 8 * (i + 1)), s, deadline=time.monotonic() + 300)
    for _ in range(600):
        if all(s.done for s in sinks):
            done.set()
            break
        time.sleep(0.05)
    assert done.is_set()
    assert [s.tokens for s in sinks] == [alone(i, 8 * (i + 1)) for i in range(3)]
    sched.close()
    with pytest.raises(RuntimeError, match="closed"):
        sched.submit(row(0, 8), Sink(), deadline=time.monotonic() + 300)

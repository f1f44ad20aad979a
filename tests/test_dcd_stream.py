"""The DCD packet reader: order, prefetch ahead of the loop, and failures that never hang a worker."""

from __future__ import annotations

import time

import pytest
from dcd_support import tiny_record

from echo_ray.train.dcd.messages import Failed, Step, Stop
from echo_ray.train.dcd.stream import PacketReader


def _step(i: int) -> Step:
    return Step(round=0, step=i, records=(tiny_record(f"u{i}"),))


def _wait_until(cond, seconds: float = 20.0) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_reader_yields_in_order_and_prefetches_while_the_step_runs(ray_cluster) -> None:
    from ray.util.queue import Queue

    q = Queue(maxsize=16, actor_options={"num_cpus": 0})
    try:
        for i in range(1, 7):
            q.put(_step(i))
        q.put(Stop())
        reader = PacketReader(q, poll_s=0.2, prefetch=2)
        it = iter(reader)
        first = next(it)
        # While the loop "trains" on the first packet, the reader takes the next two off the Ray queue.
        assert _wait_until(lambda: q.qsize() == 7 - 1 - 2), q.qsize()
        time.sleep(0.2)
        assert q.qsize() == 4, "prefetch must stop at its depth (back-pressure still reaches the feeder)"
        rest = list(it)
        assert [p.step for p in [first, *rest]] == [1, 2, 3, 4, 5, 6]
        assert reader.packets == 7 and reader.first_wait_s is not None and reader.wait_s >= 0.0
    finally:
        q.shutdown()


def test_reader_raises_on_a_feeder_error_packet(ray_cluster) -> None:
    from ray.util.queue import Queue

    q = Queue(maxsize=4, actor_options={"num_cpus": 0})
    try:
        q.put(_step(1))
        q.put(Failed("teacher pool gone"))
        it = iter(PacketReader(q, poll_s=0.2))
        assert next(it).step == 1
        with pytest.raises(RuntimeError, match="teacher pool gone"):
            next(it)
    finally:
        q.shutdown()


def test_reader_fails_instead_of_waiting_forever_when_the_queue_dies(ray_cluster) -> None:
    from ray.util.queue import Queue

    q = Queue(maxsize=4, actor_options={"num_cpus": 0})
    q.shutdown(force=True)  # the queue actor is gone (its node died, the driver exited)
    with pytest.raises(RuntimeError, match="reading the teacher queue failed"):
        next(iter(PacketReader(q, poll_s=0.2)))


def test_teacher_rate_leaves_out_the_time_the_queues_were_full() -> None:
    """Round 0 starts while the trainer workers are still starting: the feeder waits on full queues and
    the teachers get no work. Their rate is records over the time they were not held back."""
    from echo_ray.train.dcd.feeder import _RoundStats

    st = _RoundStats(expected=40, failures_count=True)
    st.first_at, st.last_at, st.records, st.blocked_s, st.busy_s = 100.0, 130.0, 40, 26.0, 3.5
    s = st.summary(0, started=100.0)
    assert s["teacher_records_per_s"] == 10.0 and round(s["teacher_records_per_s_wall"], 3) == round(40 / 30, 3)
    assert s["teacher_wall_s"] == 30.0 and s["feeder_blocked_s"] == 26.0
    st.busy_s = 0.0  # a review pass: stored trajectories, no teacher decoded anything
    assert st.summary(7, started=100.0)["teacher_records_per_s"] is None

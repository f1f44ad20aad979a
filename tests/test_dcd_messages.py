"""The typed DCD stream messages: records survive pickle and the Ray queue, anything else is refused."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from dcd_support import tiny_record

from echo_ray.train.dcd.messages import RoundEnd, Step, Stop, message_key, unknown
from echo_ray.train.dcd.store import to_row
from echo_ray.train.dcd.stream import PacketLog, PacketReader, replay_packets
from echo_ray.train.rows import LoopEvent


def _assert_same_records(got, want) -> None:
    assert len(got) == len(want)
    for a, b in zip(got, want):
        ra, rb = to_row(a), to_row(b)
        for k, want_value in rb.items():
            if isinstance(want_value, np.ndarray):
                assert np.array_equal(ra[k], want_value) and ra[k].dtype == want_value.dtype, (a.uid, k)
            else:
                assert ra[k] == want_value, (a.uid, k)
        assert a.topk_ids.shape == b.topk_ids.shape


def test_step_round_trips_through_pickle_and_the_ray_queue_with_its_records(ray_cluster) -> None:
    from ray.util.queue import Queue

    step = Step(round=1, step=7, records=(tiny_record("a", 1), tiny_record("b", 1, prompt=12, k=3)))
    back = pickle.loads(pickle.dumps(step))
    assert (type(back), back.round, back.step) == (Step, 1, 7)
    _assert_same_records(back.records, step.records)
    q = Queue(maxsize=4, actor_options={"num_cpus": 0})
    try:
        q.put(step)
        q.put(RoundEnd(1, {"records": 2}))
        q.put(Stop(unassigned=1))
        got = list(PacketReader(q, poll_s=0.2))
    finally:
        q.shutdown()
    assert [type(m) for m in got] == [Step, RoundEnd]
    _assert_same_records(got[0].records, step.records)
    assert got[1] == RoundEnd(1, {"records": 2}) and isinstance(got[1], LoopEvent)


def test_an_unknown_message_is_refused_by_its_type(ray_cluster) -> None:
    from ray.util.queue import Queue

    with pytest.raises(TypeError, match="not a DCD stream message: dict"):
        unknown({"kind": "step"})
    with pytest.raises(TypeError, match="not a DCD stream message: Stop"):
        message_key(Stop())
    with pytest.raises(TypeError, match="not a DCD stream message: str"):
        PacketLog("unused.jsonl").append(["round_end"])
    q = Queue(maxsize=4, actor_options={"num_cpus": 0})
    try:
        q.put({"kind": "step", "round": 0, "step": 1, "rows": []})  # the old dict packet
        with pytest.raises(TypeError, match="not a DCD stream message: dict"):
            next(iter(PacketReader(q, poll_s=0.2)))
    finally:
        q.shutdown()


def test_a_step_carries_records_only() -> None:
    with pytest.raises(TypeError, match="Step 3 must carry a tuple of TrajectoryRecord, got tuple holding dict"):
        Step(0, 3, (to_row(tiny_record("a")),))
    with pytest.raises(TypeError, match="got list"):
        Step(0, 3, [tiny_record("a")])


def test_the_packet_log_replays_typed_messages(tmp_path) -> None:
    recs = {u: tiny_record(u) for u in ("a", "b", "c", "d")}
    log = PacketLog(tmp_path / "packets.jsonl")
    log.append([Step(0, 1, (recs["a"],)), Step(0, 1, (recs["b"],))])
    log.append([RoundEnd(0, {"records": 2})] * 2)
    log.append([Step(1, 2, (recs["c"],)), Step(1, 2, (recs["d"],))])
    log.append([Stop()] * 2)  # not logged: nothing to replay
    asked = []

    def lookup(uids):
        asked.append(set(uids))
        return {u: recs[u] for u in uids}

    packets, keys = replay_packets(tmp_path / "packets.jsonl", lookup, rank=1, after_step=1)
    assert asked == [{"d"}] and keys == {("step", 1), ("round_end", 0), ("step", 2)}
    assert [type(p) for p in packets] == [RoundEnd, Step] and packets[0] == RoundEnd(0, {"records": 2})
    assert (packets[1].round, packets[1].step) == (1, 2)
    _assert_same_records(packets[1].records, (recs["d"],))
    assert {message_key(p) for p in packets} == {("round_end", 0), ("step", 2)}

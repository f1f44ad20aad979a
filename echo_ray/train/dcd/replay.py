"""Replay stored trajectories instead of running teachers (ablations: weights, top-K use, EOS weight).

`replay_results` reads `<dir>/round-*/part-*.parquet` in order and hands the feeder the first
`rounds * per_round` records as `TeacherResult`s, round r getting records [r * per_round,
(r + 1) * per_round), so a replay with the run's settings trains on exactly the rows the original
run trained on, round for round. `replay_heldout` returns the stored held-out trajectories
(`<dir>/heldout`), or none (agreement is then not measured).

Usage:
    results = replay_results("runs/dcd/trajectories", rounds=2, per_round=64, batch_size=4)
    heldout = replay_heldout("runs/dcd/trajectories")
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from echo_ray.train.dcd.store import read_trajectories
from echo_ray.train.dcd.teacher import TeacherResult
from echo_ray.train.dcd.trajectory import TrajectoryRecord


def replay_results(root: str, rounds: int, per_round: int, batch_size: int) -> Iterator[TeacherResult]:
    chunk: list[TrajectoryRecord] = []
    total = rounds * per_round

    def flush(r: int) -> TeacherResult:
        res = TeacherResult(list(chunk), [], 0.0, sum(x.response_len for x in chunk), "replay", r)
        chunk.clear()
        return res

    for i, rec in enumerate(read_trajectories(root)):
        if i >= total:
            break
        r = i // per_round
        rec.round = r
        chunk.append(rec)
        if len(chunk) == batch_size or (i + 1) % per_round == 0:
            yield flush(r)


def replay_heldout(root: str) -> list[TrajectoryRecord]:
    held = Path(root) / "heldout"
    return list(read_trajectories(held)) if held.is_dir() else []

"""The typed messages of the DCD stream, from the feeder (driver) to each train worker's queue.

Per global step every worker's queue gets one `Step`: its micro-batch of teacher records, which stay
`TrajectoryRecord`s until `DcdStage.build_batch`. After a round's last step comes a `RoundEnd` with
the feeder's teacher metrics for that round; it is also the `LoopEvent` the worker hands the loop's
callbacks. After the last round comes `Stop`; a feeder that fails sends `Failed` so no worker waits
forever (protocol and ordering: `stream`). They travel through Ray actor queues by pickle. Readers
dispatch on the type; anything else is refused by `unknown`, naming the type it got.

Usage:
    q.put(Step(round=0, step=1, records=(rec_a, rec_b)));  q.put(RoundEnd(0, stats));  q.put(Stop())
    match msg:
        case Step(records=records): ...
        case _: unknown(msg)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NoReturn, Union

from echo_ray.train.dcd.trajectory import TrajectoryRecord
from echo_ray.train.rows import LoopEvent


@dataclass(frozen=True, eq=False)  # eq=False: records hold numpy arrays, which have no plain ==
class Step:
    """One worker's micro-batch of global step `step` (1-based, the same on every worker) of a round."""

    round: int
    step: int
    records: tuple[TrajectoryRecord, ...]

    def __post_init__(self) -> None:
        bad = [type(r).__name__ for r in self.records if not isinstance(r, TrajectoryRecord)]
        if not isinstance(self.records, tuple) or bad:
            raise TypeError(f"Step {self.step} must carry a tuple of TrajectoryRecord, got {type(self.records).__name__}"
                            f"{' holding ' + ', '.join(sorted(set(bad))) if bad else ''}")  # fmt: skip


@dataclass(frozen=True)
class RoundEnd(LoopEvent):
    """Round `round` is complete; `stats`: the feeder's teacher metrics for it (feeder._RoundStats)."""

    round: int
    stats: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Stop:
    """No more steps; `unassigned`: rows left after the last round, too few to give every worker one."""

    unassigned: int = 0


@dataclass(frozen=True)
class Failed:
    """The feeder (or the queue under it) failed; the worker raises with `reason`."""

    reason: str


Message = Union[Step, RoundEnd, Stop, Failed]


def unknown(msg: object) -> NoReturn:
    raise TypeError(f"not a DCD stream message: {type(msg).__name__} (expected Step, RoundEnd, Stop or Failed)")


def message_key(msg: Step | RoundEnd) -> tuple[str, int]:
    """A message's identity in the stream: a step by its number, a round end by its round."""
    match msg:
        case Step(step=step):
            return ("step", step)
        case RoundEnd(round=r):
            return ("round_end", r)
        case _:
            unknown(msg)

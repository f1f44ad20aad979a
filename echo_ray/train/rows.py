"""What the shared training loop reads: a typed row source, and the callbacks it calls.

A `RowSource` travels (pickled) in `train_loop_config["rows"]` to every Ray Train worker; there
the loop calls `source.open(job, parts, rank, position)` once and gets a `RowStream`:

* `batches`: an iterator of `(rows, DataPosition)` micro-batches. Between micro-batches it may
  also yield `LoopEvent`s (DCD: the end of a teacher round); the loop hands each event to the
  callbacks, so the iterator itself only reads;
* `callbacks` (`LoopCallbacks`): `on_start(state, scored)` before the first step, `on_event(event)`
  as events arrive, `on_finish(state)` after the last step (every rank; it may be collective).
  `scored()` is a context in which the model holds the weights to evaluate: the engine's averaged
  weights when the stage keeps an average (`ema_decay`), else the trained ones as they are.

CPT and RAD read their Ray Data shard (`DatasetRows`); DCD streams teacher trajectories
(echo_ray.train.dcd.worker.DcdRowSource).

Usage:
    TorchTrainer(train_func, train_loop_config={"job": job, "rows": DatasetRows()}, ...)
    stream = source.open(job, parts, rank, state.position); stream.callbacks.on_start(state, engine.averaged)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, Union

from echo_ray.train.data import DataPosition, row_batches


class LoopEvent:
    """Base of the non-row items a row stream may yield between micro-batches."""


class LoopCallbacks:
    """Hooks the loop calls at fixed points; the defaults do nothing."""

    def on_start(self, state: Any, scored: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext) -> None:
        """Before the first step of this worker (state: TrainState, possibly restored; scored: see above)."""

    def on_event(self, event: LoopEvent) -> None:
        """An event the stream yielded before the next micro-batch."""

    def on_finish(self, state: Any) -> None:
        """After the last step, on every rank."""


Item = Union[tuple[list, DataPosition], LoopEvent]  # rows: dataset dicts (CPT, RAD), TrajectoryRecords (DCD)


@dataclass
class RowStream:
    batches: Iterator[Item]
    callbacks: LoopCallbacks = field(default_factory=LoopCallbacks)

    def next_rows(self) -> tuple[list, DataPosition]:
        """The next micro-batch; events on the way go to the callbacks."""
        while True:
            item = next(self.batches)
            if isinstance(item, LoopEvent):
                self.callbacks.on_event(item)
                continue
            return item


class RowSource(Protocol):
    def open(self, job: Any, parts: Any, rank: int, position: DataPosition) -> RowStream: ...


@dataclass(frozen=True)
class DatasetRows:
    """The stage's Ray Data shard ("train"), in micro-batches of `batch_size` rows (CPT, RAD)."""

    def open(self, job: Any, parts: Any, rank: int, position: DataPosition) -> RowStream:
        import ray.train

        return RowStream(row_batches(ray.train.get_dataset_shard("train"), job.cfg.batch_size, position))

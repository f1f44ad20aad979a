"""TeacherPool: N teacher actors decoding task batches, with dead-actor replacement.

`map` submits task batches to the actors (at most `max_in_flight` calls per actor) and yields each
`TeacherResult` as it completes. It is a generator: it submits more work only when the consumer asks
for the next result, so a consumer blocked on a full queue stops the teachers (back-pressure) and
memory holds at most `num_actors * max_in_flight` batches of results.

Exactly-once: a call's records come back only as its return value, never pushed from inside the
actor, so a call either delivers all its records or none. When an actor dies (its process exits,
its node goes away) every call it had in flight fails with `RayActorError`; the pool starts one
replacement actor in the same slot and resubmits exactly those batches, so no target is lost or
duplicated. Ray's own actor restarts are off (`max_restarts=0`) because they would not redo the
in-flight calls. An actor that keeps dying (more than `max_replacements` times in all) is a bug or
a resource problem and raises.

Usage:
    pool = TeacherPool(TeacherWorker, (spec,), num_actors=2, num_cpus=0.5, num_gpus=0)
    for result in pool.map(batches, round_of=lambda i: 0): ...
    pool.replacements, pool.shutdown()
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import ray
from ray.exceptions import RayActorError

from echo_ray.train.dcd.trajectory import PromptTask

log = logging.getLogger(__name__)


@dataclass
class _Call:
    slot: int
    generation: int
    tasks: list[PromptTask]
    round_index: int


class TeacherPool:
    """A fixed number of actor slots running `worker_cls(*args)`; dead actors are replaced."""

    def __init__(self, worker_cls: type, args: tuple, num_actors: int, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, max_in_flight: int = 2, max_replacements: int = 8):  # fmt: skip
        if num_actors < 1:
            raise ValueError(f"a teacher pool needs at least one actor, got {num_actors}")
        self._remote = ray.remote(worker_cls).options(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=0)
        self._args = args
        self.max_in_flight, self.max_replacements = max_in_flight, max_replacements
        self.replacements = 0
        self._generation = [0] * num_actors
        self._actors = [self._start(i) for i in range(num_actors)]

    def _start(self, slot: int):
        return self._remote.remote(*self._args, name=f"teacher-{slot}.{self._generation[slot]}")

    @property
    def num_actors(self) -> int:
        return len(self._actors)

    def ready(self, timeout: float | None = None) -> list[str]:
        """Block until every actor has loaded the teacher; returns their names."""
        return ray.get([a.ping.remote() for a in self._actors], timeout=timeout)

    def _replace(self, slot: int, generation: int) -> None:
        if generation != self._generation[slot]:
            return  # this slot was already replaced after an earlier failed call
        self.replacements += 1
        if self.replacements > self.max_replacements:
            raise RuntimeError(f"teacher actors died {self.replacements} times; giving up (see the actor logs)")
        ray.kill(self._actors[slot], no_restart=True)
        self._generation[slot] += 1
        log.warning("teacher actor in slot %d died; starting replacement %d", slot, self._generation[slot])
        self._actors[slot] = self._start(slot)

    def map(self, batches: Iterable[tuple[int, list[PromptTask]]]) -> Iterator:
        """(round_index, tasks) batches -> TeacherResult per batch, in completion order.

        `batches` is asked for more whenever a slot is free; an iterator that is empty now may
        return items later (`TaskQueue`), e.g. tasks the consumer added while handling a result.
        """
        todo = iter(batches)  # may be a `TaskQueue` that grows while we run (replacement tasks)
        retry: list[_Call] = []
        pending: dict[ray.ObjectRef, _Call] = {}
        load = [0] * self.num_actors
        while True:
            while True:  # fill free slots: retries first, then new batches
                slot = min(range(self.num_actors), key=lambda s: load[s])
                if load[slot] >= self.max_in_flight:
                    break
                if retry:
                    call = retry.pop(0)
                    call.slot, call.generation = slot, self._generation[slot]
                else:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    call = _Call(slot, self._generation[slot], nxt[1], nxt[0])
                pending[self._actors[slot].decode.remote(call.tasks, call.round_index)] = call
                load[slot] += 1
            if not pending:
                return
            [ref], _ = ray.wait(list(pending), num_returns=1)
            call = pending.pop(ref)
            load[call.slot] -= 1
            try:
                result = ray.get(ref)
            except RayActorError:
                self._replace(call.slot, call.generation)
                retry.append(call)
                continue
            yield result

    def shutdown(self) -> None:
        for a in self._actors:
            ray.kill(a, no_restart=True)
        self._actors = []

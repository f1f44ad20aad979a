"""TeacherPool: N teacher actors decoding task batches, kept alive by Ray's actor fault tolerance.

`map` submits task batches to the actors (at most `max_in_flight` calls per actor) and yields each
`TeacherResult` as it completes. It is a generator: it submits more work only when the consumer asks
for the next result, so a consumer blocked on a full queue stops the teachers (back-pressure) and
memory holds at most `num_actors * max_in_flight` batches of results.

Exactly-once: a call's records come back only as its return value, never pushed from inside the
actor, so a call either delivers all its records or none. The actors are created with
`max_restarts` and `max_task_retries=-1`: when an actor's process dies (or its node goes away) Ray
restarts it (the constructor reloads the teacher) and re-runs exactly the calls it had in flight,
each of which still resolves its one ObjectRef once, so no target is lost or duplicated. A restarted
actor names itself `<name>.restart@<pid>` and the pool counts the restarts it sees in the results
(`replacements`). An actor that dies more than `max_restarts` times is a bug or a resource problem:
its calls fail with RayActorError and `map` raises.

Usage:
    pool = TeacherPool(TeacherWorker, (spec,), num_actors=2, num_cpus=0.5, num_gpus=0)
    for result in pool.map(batches): ...
    pool.replacements, pool.shutdown()
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator

import ray
from ray.exceptions import RayActorError

from echo_ray.train.dcd.trajectory import PromptTask

log = logging.getLogger(__name__)
RESTART_TAG = ".restart@"


def _restart_aware(worker_cls: type) -> type:
    """`worker_cls` whose name records a Ray restart (the constructor runs again in a new process)."""

    class RestartAware(worker_cls):
        def __init__(self, *args, name: str = "", **kwargs):
            if ray.get_runtime_context().was_current_actor_reconstructed:
                name = f"{name}{RESTART_TAG}{os.getpid()}"
            super().__init__(*args, name=name, **kwargs)

    RestartAware.__name__ = RestartAware.__qualname__ = worker_cls.__name__
    return RestartAware


class TeacherPool:
    """A fixed number of teacher actors running `worker_cls(*args)`; Ray restarts dead ones."""

    def __init__(self, worker_cls: type, args: tuple, num_actors: int, num_cpus: float = 1.0,
                 num_gpus: float = 0.0, max_in_flight: int = 2, max_restarts: int = 8):  # fmt: skip
        if num_actors < 1:
            raise ValueError(f"a teacher pool needs at least one actor, got {num_actors}")
        remote = ray.remote(_restart_aware(worker_cls)).options(
            num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=-1)  # fmt: skip
        self.max_in_flight, self.max_restarts = max_in_flight, max_restarts
        self._actors = [remote.remote(*args, name=f"teacher-{i}") for i in range(num_actors)]
        self._restarted: set[str] = set()

    @property
    def num_actors(self) -> int:
        return len(self._actors)

    @property
    def replacements(self) -> int:
        """Actor restarts seen so far (each restarted process that returned a result)."""
        return len(self._restarted)

    def ready(self, timeout: float | None = None) -> list[str]:
        """Block until every actor has loaded the teacher; returns their names."""
        return ray.get([a.ping.remote() for a in self._actors], timeout=timeout)

    def _note(self, slot: int, teacher: str) -> None:
        if RESTART_TAG in teacher and teacher not in self._restarted:
            self._restarted.add(teacher)
            log.warning("teacher actor %d was restarted by Ray (%s); its in-flight batches were re-run", slot, teacher)

    def map(self, batches: Iterable[tuple[int, list[PromptTask]]]) -> Iterator:
        """(round_index, tasks) batches -> TeacherResult per batch, in completion order.

        `batches` is asked for more whenever a slot is free; an iterator that is empty now may
        return items later (`TaskQueue`), e.g. tasks the consumer added while handling a result.
        """
        todo = iter(batches)  # may be a `TaskQueue` that grows while we run (replacement tasks)
        pending: dict[ray.ObjectRef, int] = {}
        load = [0] * self.num_actors
        while True:
            while True:  # fill free slots with new batches, least loaded actor first
                slot = min(range(self.num_actors), key=lambda s: load[s])
                if load[slot] >= self.max_in_flight:
                    break
                nxt = next(todo, None)
                if nxt is None:
                    break
                pending[self._actors[slot].decode.remote(nxt[1], nxt[0])] = slot
                load[slot] += 1
            if not pending:
                return
            [ref], _ = ray.wait(list(pending), num_returns=1)
            slot = pending.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except RayActorError as e:
                raise RuntimeError(f"teacher actor {slot} died more than max_restarts={self.max_restarts} times; "
                                   f"giving up (see the actor logs): {str(e).splitlines()[0]}") from None  # fmt: skip
            self._note(slot, result.teacher)
            yield result

    def shutdown(self) -> None:
        for a in self._actors:
            ray.kill(a, no_restart=True)
        self._actors = []

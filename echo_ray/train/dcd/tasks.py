"""DCD prompts: the dcd split cut into held-out prompts, fresh prompts per round, and spares.

The split's rows are shuffled once (seeded), then: the first `heldout_prompts` are the held-out
set (teacher decodes them once; the student's one-step agreement is measured on them and they
are never trained on), the next `rounds * prompts_per_round` are the rounds' prompts (each round
gets new ones), and the rest are spares. A study the teacher cannot read (bad image) is reported
with its reason and replaced by the next spare, so every round trains on exactly
`prompts_per_round` trajectories; with no spare left the run stops with an EchoError.

`TaskQueue` hands the pool (round, tasks) batches; it may be empty now and have more later
(replacements are appended while the pool runs), which `TeacherPool.map` supports.

Usage:
    plan = plan_tasks(load_tasks(files), heldout=16, rounds=2, per_round=64, seed=0)
    queue = TaskQueue(plan, batch_size=4)
    queue.replace(round_index=1, failed=[("uid", "unreadable image")])
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

import pyarrow.dataset as pads

from echo_ray.errors import ConfigError, EchoError
from echo_ray.storage import resolve_fs
from echo_ray.train.dcd.trajectory import PromptTask

COLUMNS = ("uid", "study_id", "language", "images", "report")


def load_tasks(files: list[str]) -> list[PromptTask]:
    """All rows of the dcd split's Parquet files as tasks (in file order)."""
    filesystem, _ = resolve_fs(files[0])
    ds = pads.dataset([resolve_fs(f)[1] for f in files], filesystem=filesystem, format="parquet")
    cols = [c for c in COLUMNS if c in ds.schema.names]
    out = []
    for i, row in enumerate(ds.to_table(columns=cols).to_pylist()):
        sid = str(row.get("study_id") or i)
        out.append(PromptTask(uid=str(row.get("uid") or sid), study_id=sid, language=row.get("language") or "en",
                              images=[dict(im) for im in (row.get("images") or [])], reference=row.get("report") or ""))  # fmt: skip
    return out


@dataclass
class TaskPlan:
    heldout: list[PromptTask]
    rounds: list[list[PromptTask]]
    spares: deque = field(default_factory=deque)


def plan_tasks(tasks: list[PromptTask], heldout: int, rounds: int, per_round: int, seed: int) -> TaskPlan:
    need = heldout + rounds * per_round
    if len(tasks) < need:
        raise ConfigError(
            f"the dcd split has {len(tasks)} rows; DCD needs {need} distinct prompts (heldout_prompts={heldout} + "
            f"rounds={rounds} x prompts_per_round={per_round}); lower them or add rows"
        )
    order = list(tasks)
    random.Random(seed).shuffle(order)
    body = order[heldout:need]
    return TaskPlan(order[:heldout], [body[r * per_round : (r + 1) * per_round] for r in range(rounds)], deque(order[need:]))


class TaskQueue:
    """(round_index, tasks) batches in round order; `replace` appends spares for failed studies."""

    def __init__(self, plan: TaskPlan, batch_size: int):
        self.plan, self.batch_size = plan, max(1, batch_size)
        self._batches: deque = deque()
        for r, tasks in enumerate(plan.rounds):
            self._extend(r, tasks)
        self.replaced: list[tuple[int, str, str]] = []  # (round, failed uid, reason)

    def _extend(self, r: int, tasks: list[PromptTask]) -> None:
        for i in range(0, len(tasks), self.batch_size):
            self._batches.append((r, tasks[i : i + self.batch_size]))

    def __iter__(self) -> "TaskQueue":
        return self

    def __next__(self) -> tuple[int, list[PromptTask]]:
        if not self._batches:
            raise StopIteration
        return self._batches.popleft()

    def replace(self, round_index: int, failed: list[tuple[str, str]]) -> None:
        """Queue one spare per failed study for the same round (ahead of later work)."""
        if len(failed) > len(self.plan.spares):
            first = "; ".join(f"{u}: {r}" for u, r in failed[:3])
            raise EchoError(f"{len(failed)} dcd studies failed in the teacher ({first}) and only "
                            f"{len(self.plan.spares)} spare rows are left to replace them")  # fmt: skip
        spares = [self.plan.spares.popleft() for _ in failed]
        self.replaced.extend((round_index, u, r) for u, r in failed)
        chunks = [spares[i : i + self.batch_size] for i in range(0, len(spares), self.batch_size)]
        for chunk in reversed(chunks):
            self._batches.appendleft((round_index, chunk))

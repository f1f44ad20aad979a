"""Parquet write and replay of DCD trajectory records (ablations without re-running the teacher).

Layout: `<dir>/round-RRRR/part-NNNNN.parquet`, one row per prompt. Per-position arrays are list
columns; the (R, K) top-K arrays are stored flattened with their width in `top_k`. Files are written
under a temporary name and renamed, so a crashed run never leaves a half file that a replay would
read. `read_trajectories` yields records in (round, part, row) order and validates every one.

Usage:
    w = TrajectoryWriter("runs/dcd/trajectories")
    w.write(records, round_index=0)
    n = count_trajectories("runs/dcd/trajectories")
    for rec in read_trajectories("runs/dcd/trajectories"): ...
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from echo_ray.errors import InputError
from echo_ray.train.dcd.trajectory import PromptTask, TrajectoryRecord

IMAGE_TYPE = pa.struct([("path", pa.string()), ("view", pa.string())])
SCHEMA = pa.schema(
    [
        ("uid", pa.string()),
        ("study_id", pa.string()),
        ("language", pa.string()),
        ("images", pa.list_(IMAGE_TYPE)),
        ("reference", pa.string()),
        ("round", pa.int32()),
        ("teacher", pa.string()),
        ("produced_at", pa.float64()),
        ("block_size", pa.int32()),
        ("steps", pa.int32()),
        ("top_k", pa.int32()),
        ("eos_pos", pa.int32()),
        ("hit_max", pa.bool_()),
        ("prompt_ids", pa.list_(pa.int32())),
        ("tokens", pa.list_(pa.int32())),
        ("commit_step", pa.list_(pa.int32())),
        ("topk_ids", pa.list_(pa.int32())),  # flattened (R * K)
        ("topk_logprobs", pa.list_(pa.float32())),  # flattened (R * K)
        ("topk_logmass", pa.list_(pa.float32())),
        ("context", pa.list_(pa.int32())),  # on-policy records: the student's report; empty otherwise
    ]
)


def to_row(r: TrajectoryRecord) -> dict:
    """A record as one flat row (SCHEMA's columns; arrays stay numpy): one row of the Parquet table."""
    t = r.task
    return dict(uid=t.uid, study_id=t.study_id, language=t.language,
                images=[{"path": im["path"], "view": im.get("view", "")} for im in t.images],
                reference=t.reference, round=r.round, teacher=r.teacher, produced_at=r.produced_at,
                block_size=r.block_size, steps=r.steps, top_k=r.top_k, eos_pos=r.eos_pos, hit_max=r.hit_max,
                prompt_ids=r.prompt_ids, tokens=r.tokens, commit_step=r.commit_step,
                topk_ids=r.topk_ids.reshape(-1), topk_logprobs=r.topk_logprobs.reshape(-1),
                topk_logmass=r.topk_logmass,
                context=r.context if r.context is not None else np.zeros(0, dtype=np.int32))  # fmt: skip


def to_table(records: list[TrajectoryRecord]) -> pa.Table:
    rows = [to_row(r) for r in records]
    return pa.Table.from_pydict({name: [row[name] for row in rows] for name in SCHEMA.names}, schema=SCHEMA)


def _context(values) -> np.ndarray | None:
    """The stored student report of an on-policy record; None for an empty list or a missing column."""
    return None if values is None or len(values) == 0 else np.asarray(values, dtype=np.int32)


def from_row(row: dict) -> TrajectoryRecord:
    """A `to_row` dict or a Parquet row (as `Table.to_pylist` gives it) back into a validated record."""
    K = int(row["top_k"])
    task = PromptTask(uid=row["uid"], study_id=row["study_id"], language=row["language"],
                      images=[dict(im) for im in row["images"]], reference=row["reference"] or "")  # fmt: skip
    rec = TrajectoryRecord(
        task=task,
        prompt_ids=np.asarray(row["prompt_ids"], dtype=np.int32),
        tokens=np.asarray(row["tokens"], dtype=np.int32),
        commit_step=np.asarray(row["commit_step"], dtype=np.int32),
        topk_ids=np.asarray(row["topk_ids"], dtype=np.int32).reshape(-1, K),
        topk_logprobs=np.asarray(row["topk_logprobs"], dtype=np.float32).reshape(-1, K),
        topk_logmass=np.asarray(row["topk_logmass"], dtype=np.float32),
        block_size=int(row["block_size"]),
        steps=int(row["steps"]),
        eos_pos=int(row["eos_pos"]),
        hit_max=bool(row["hit_max"]),
        round=int(row["round"]),
        teacher=row["teacher"] or "",
        produced_at=float(row["produced_at"]),
        context=_context(row.get("context")),
    )
    rec.validate()
    return rec


class TrajectoryWriter:
    """Appends record batches as new part files of a round directory (atomic per file)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._parts: dict[int, int] = {}

    def write(self, records: list[TrajectoryRecord], round_index: int) -> Path | None:
        if not records:
            return None
        rdir = self.root / f"round-{round_index:04d}"
        rdir.mkdir(parents=True, exist_ok=True)
        n = self._parts.get(round_index, len(list(rdir.glob("part-*.parquet"))))
        self._parts[round_index] = n + 1
        target = rdir / f"part-{n:05d}.parquet"
        tmp = rdir / f".part-{n:05d}.parquet.tmp"
        pq.write_table(to_table(records), tmp)
        os.replace(tmp, target)
        return target


def trajectory_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"trajectory directory not found: {root}")
    files = sorted(root.glob("round-*/part-*.parquet"))
    if not files:
        raise InputError(f"no trajectory Parquet files (round-*/part-*.parquet) under {root}")
    return files


def count_trajectories(root: str | Path) -> int:
    """Number of stored records, from the Parquet footers (no data read)."""
    return sum(pq.ParquetFile(f).metadata.num_rows for f in trajectory_files(root))


def read_trajectories(root: str | Path) -> Iterator[TrajectoryRecord]:
    for f in trajectory_files(root):
        try:
            table = pq.read_table(f)
        except (OSError, pa.ArrowInvalid) as e:
            raise InputError(f"unreadable trajectory file {f}: {str(e).splitlines()[0]}") from None
        # `context` came with on-policy records; stores written before it still replay
        missing = [n for n in SCHEMA.names if n not in table.column_names and n != "context"]
        if missing:
            raise InputError(f"{f} is not a DCD trajectory file (missing columns {missing})")
        for row in table.to_pylist():
            yield from_row(row)

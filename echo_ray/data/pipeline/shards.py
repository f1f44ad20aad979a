"""Resumable sharded stages: run a Ray Data pipeline over pending shards, write each as it completes.

A shard is a fixed set of rows decided once (by prepare) and persisted, so its row count is known.
A stage streams the pipeline's output blocks to the driver, buffers rows by their `shard` column
and writes `<out_dir>/<shard>.parquet` atomically the moment a shard has all its rows. A shard
file therefore exists only when complete; a rerun (after a crash or kill) processes exactly the
shards without a file, so nothing is redone, lost or written twice. Engines that must materialize
(vllm's retry rounds) run in waves of `wave` shards, each wave written when it finishes.

Usage:
    stats = run_shard_stage("standardize", store, "_work/standardize", {"iu-00000-0000": 512},
                            build=lambda shards: make_dataset(shards), progress=progress)
"""

from __future__ import annotations

import logging
import time
from typing import Callable, Optional

import pyarrow as pa
import pyarrow.compute as pc

from echo_ray.data.pipeline.store import OutputStore

log = logging.getLogger("echo_ray.normalize")


def _read_files(batch: pa.Table, store: OutputStore) -> pa.Table:
    tables = [store.read_table(rel) for rel in batch.column("rel").to_pylist()]
    return pa.concat_tables(tables, promote_options="default")


def read_shards(store: OutputStore, rels: list[str]):
    """A Ray Dataset with one block per shard file (relative paths in `store`).

    ray.data.read_parquet coalesces small files into one block, which would leave all but one
    actor of a pool idle; one read task per file keeps the shards parallel and streaming.
    """
    import ray.data

    ds = ray.data.from_items([{"rel": r} for r in rels], override_num_blocks=max(1, len(rels)))
    return ds.map_batches(_read_files, batch_size=1, batch_format="pyarrow", fn_kwargs={"store": store})


def pending_shards(store: OutputStore, out_dir: str, expected: dict[str, int]) -> list[str]:
    done = {p.rsplit("/", 1)[1][: -len(".parquet")] for p in store.listdir(out_dir, ".parquet")}
    return [k for k in expected if k not in done]


def _waves(keys: list[str], wave: Optional[int]) -> list[list[str]]:
    if not wave or wave <= 0:
        return [keys]
    return [keys[i : i + wave] for i in range(0, len(keys), wave)]


def run_shard_stage(
    name: str,
    store: OutputStore,
    out_dir: str,
    expected: dict[str, int],
    build: Callable[[list[str]], object],
    progress: Callable[[str, dict], None],
    empty: Optional[pa.Schema] = None,
    wave: Optional[int] = None,
) -> dict[str, int]:
    """Process the shards of `expected` (shard -> row count) that have no output file yet.

    `build(shards)` returns a Ray Dataset whose rows carry a `shard` column, exactly
    `expected[shard]` rows per shard. Shards expecting zero rows are written empty (`empty` schema).
    Returns {"shards": total, "resumed": done before, "processed": done now, "rows": rows now}.
    """
    pending = pending_shards(store, out_dir, expected)
    stats = {"shards": len(expected), "resumed": len(expected) - len(pending), "processed": 0, "rows": 0}
    log.info("%s: %d shard(s), %d already done", name, len(expected), stats["resumed"])
    t0 = time.time()

    def finish(key: str, table: pa.Table) -> None:
        store.write_table(f"{out_dir}/{key}.parquet", table)
        stats["processed"] += 1
        stats["rows"] += table.num_rows
        rate = stats["rows"] / max(time.time() - t0, 1e-9)
        log.info("%s: shard %s done (%d rows) [%d/%d, %.1f rows/s]", name, key, table.num_rows,
                 stats["resumed"] + stats["processed"], len(expected), rate)  # fmt: skip
        progress("shard_done", {"stage": name, "shard": key, "rows": table.num_rows, **stats})

    for key in [k for k in pending if expected[k] == 0]:
        finish(key, (empty or pa.schema([("shard", pa.string())])).empty_table())
    for keys in _waves([k for k in pending if expected[k] > 0], wave):
        if not keys:
            continue
        buffers: dict[str, list[pa.Table]] = {}
        counts: dict[str, int] = {}
        for batch in build(keys).iter_batches(batch_size=None, batch_format="pyarrow"):
            shard_col = batch.column("shard")
            for key in pc.unique(shard_col).to_pylist():
                part = batch.filter(pc.equal(shard_col, key))
                buffers.setdefault(key, []).append(part)
                counts[key] = counts.get(key, 0) + part.num_rows
                if key not in expected or counts[key] > expected[key]:
                    raise RuntimeError(f"{name}: shard {key} got {counts[key]} rows, expected {expected.get(key)}")
                if counts[key] == expected[key]:
                    finish(key, pa.concat_tables(buffers.pop(key), promote_options="default"))
        if buffers:
            short = {k: f"{counts[k]}/{expected[k]}" for k in buffers}
            raise RuntimeError(f"{name}: the pipeline returned too few rows for shards {short}")
    return stats

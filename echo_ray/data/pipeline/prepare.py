"""Read every source and apply the quarantine checks and the modality filter (stage 1), per task.

One Ray Data row per adapter task (a CSV file, a MIMIC group directory, a range of phantom lines);
`map_batches` runs `prepare_task` on each, in parallel, which
  1. reads the task's records with the source adapter,
  2. quarantines bad input (validate.py) and filters non-chest / non-clinical reports (filter.py),
  3. writes the kept records in shards of `shard_rows` to `_work/input/<shard>.parquet`,
     the rejected ones to `rejected/prepare-<task>.parquet`,
  4. writes `_work/prepare/<task>.json` last: the task's done-marker and its counts.
A rerun skips tasks whose marker exists, so a killed prepare resumes per task.

Usage:
    summaries = run_prepare(tasks, store, cfg)   # tasks from `list_source_tasks(cfg)`
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from typing import Any, Callable

import pyarrow as pa

from echo_ray.config import NormalizeConfig, SourceSpec
from echo_ray.data.pipeline.filter import modality_filter
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.data.pipeline.validate import PathExists, check_record
from echo_ray.data.schema import RECORD_SCHEMA, REJECT_SCHEMA, to_table
from echo_ray.data.sources import get_adapter
from echo_ray.errors import ConfigError

log = logging.getLogger("echo_ray.normalize")
INPUT_SCHEMA = RECORD_SCHEMA.append(pa.field("shard", pa.string()))


def list_source_tasks(cfg: NormalizeConfig) -> list[dict[str, Any]]:
    """Every adapter task of every configured source; bad names/paths raise EchoError here."""
    if not cfg.sources:
        raise ConfigError("no sources given (normalize.sources, or --source NAME=PATH)")
    tasks = []
    names = [s.name for s in cfg.sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"a source is given twice: {names}")
    for spec in cfg.sources:
        adapter = get_adapter(spec.name)
        for i, task in enumerate(adapter.list_tasks(spec)):
            tasks.append({"key": f"{spec.name}-{i:05d}", "spec": dataclasses.asdict(spec), "task": task})
    return tasks


def _reject(rec: dict, status: str, reason: str, detail: str) -> dict:
    return {**rec, "status": status, "stage": "prepare", "reason": reason, "detail": detail, "duplicate_of": ""}


def split_records(records: list[dict], require_images: bool, exists: Callable[[str], bool]) -> tuple[list, list]:
    """(kept, rejected) with reasons; quarantine checks first, then the modality filter."""
    kept, rejected = [], []
    for rec in records:
        bad = check_record(rec, require_images, exists)
        if bad:
            rejected.append(_reject(rec, "quarantined", *bad))
            continue
        drop = modality_filter(rec)
        if drop:
            rejected.append(_reject(rec, "filtered", *drop))
            continue
        kept.append(rec)
    return kept, rejected


def prepare_task(item: dict[str, Any], store: OutputStore, shard_rows: int) -> dict[str, Any]:
    """Run one adapter task end to end (see module doc); returns its summary (also written)."""
    spec = SourceSpec(**item["spec"])
    records = get_adapter(spec.name).read_task(spec, item["task"])
    kept, rejected = split_records(records, spec.require_images, PathExists())
    shards = []
    for n, start in enumerate(range(0, len(kept), max(1, shard_rows))):
        key = f"{item['key']}-{n:04d}"
        chunk = [{**r, "shard": key} for r in kept[start : start + shard_rows]]
        store.write_table(f"_work/input/{key}.parquet", to_table(chunk, INPUT_SCHEMA))
        shards.append({"key": key, "rows": len(chunk)})
    if rejected:
        store.write_table(f"rejected/prepare-{item['key']}.parquet", to_table(rejected, REJECT_SCHEMA))
    counts: dict[str, Counter] = {"filtered": Counter(), "quarantined": Counter()}
    for r in rejected:
        counts[r["status"]][r["reason"]] += 1
    summary = {
        "key": item["key"], "source": spec.name, "task": item["task"], "in": len(records), "kept": len(kept),
        "shards": shards, "filtered": dict(counts["filtered"]), "quarantined": dict(counts["quarantined"]),
    }  # fmt: skip
    store.write_json(f"_work/prepare/{item['key']}.json", summary)
    return summary


def _prepare_batch(batch: pa.Table, store: OutputStore, shard_rows: int) -> pa.Table:
    items = [json.loads(x) for x in batch.column("item").to_pylist()]
    return pa.table({"summary": [json.dumps(prepare_task(it, store, shard_rows)) for it in items]})


def run_prepare(tasks: list[dict[str, Any]], store: OutputStore, cfg: NormalizeConfig,
                progress: Callable[[str, dict], None]) -> list[dict[str, Any]]:  # fmt: skip
    """Run the pending tasks on Ray Data; returns the summaries of all tasks (done before or now)."""
    import ray.data

    pending = [t for t in tasks if not store.exists(f"_work/prepare/{t['key']}.json")]
    log.info("prepare: %d task(s), %d already done", len(tasks), len(tasks) - len(pending))
    if pending:
        ds = ray.data.from_items([{"item": json.dumps(t)} for t in pending], override_num_blocks=len(pending))
        ds = ds.map_batches(
            _prepare_batch, batch_size=1, batch_format="pyarrow", num_cpus=cfg.num_cpus_per_task,
            fn_kwargs={"store": store, "shard_rows": cfg.shard_rows},
        )  # fmt: skip
        for row in ds.iter_rows():
            s = json.loads(row["summary"])
            log.info("prepare %s: %d in, %d kept, %d shard(s)", s["key"], s["in"], s["kept"], len(s["shards"]))
            progress("task_done", {"stage": "prepare", **s})
    return [store.read_json(f"_work/prepare/{t['key']}.json") for t in tasks]

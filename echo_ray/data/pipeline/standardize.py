"""Stage 2, standardization: each kept record -> `{"findings", "impression"}` from the chosen engine.

Reads the input shards written by prepare, hands raw sections to the engine (rules, transformers
or vllm; echo_ray.engines), and turns the engine's answer into `status` kept / quarantined. Kept
rows get `labels` from the CheXpert-style labeler on the normalized English text (what training and
evaluation compare against). Records the engine failed on (invalid JSON after the retries,
exceptions) are quarantined with the engine's error as detail. Shards are written as they complete
and skipped on rerun (shards.py).

Usage:
    stats = run_standardize(engine, store, {"iu_xray-00000-0000": 512}, cfg, progress)
"""

from __future__ import annotations

from typing import Callable

import pyarrow as pa

from echo_ray.config import NormalizeConfig
from echo_ray.data.pipeline.prepare import INPUT_SCHEMA
from echo_ray.data.pipeline.shards import read_shards, run_shard_stage
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.data.schema import LABELS_TYPE, STANDARDIZED_FIELDS
from echo_ray.engines.base import IN_COLUMNS, OUT_FIELDS, TextEngine

STD_DIR = "_work/standardize"
STD_SCHEMA = pa.schema(list(INPUT_SCHEMA) + [pa.field(n, t) for n, t in STANDARDIZED_FIELDS if n != "shard"])


def engine_inputs(batch: pa.Table, findings: str, impression: str) -> pa.Table:
    """Add the engine's src_* columns from the given text columns (and indication)."""
    cols = {
        "src_findings": batch.column(findings),
        "src_impression": batch.column(impression),
        "src_indication": batch.column("indication"),
    }
    for name in IN_COLUMNS:
        batch = batch.append_column(name, cols[name].cast(pa.string()))
    return batch


def drop_engine_columns(batch: pa.Table) -> pa.Table:
    engine_cols = set(IN_COLUMNS) | {n for n, _ in OUT_FIELDS}
    return batch.drop_columns([c for c in batch.column_names if c in engine_cols])


def _std_inputs(batch: pa.Table) -> pa.Table:
    return engine_inputs(batch, "raw_findings", "raw_impression")


def _std_outputs(batch: pa.Table) -> pa.Table:
    from echo_ray.clinical.labeler import label_report

    errors = batch.column("out_error").to_pylist()
    findings = batch.column("out_findings").to_pylist()
    impression = batch.column("out_impression").to_pylist()
    kept = [not e for e in errors]
    labels = [
        [(k, int(v)) for k, v in label_report(f"{f} {i}").items()] if ok else []
        for f, i, ok in zip(findings, impression, kept)
    ]
    new = {
        "status": pa.array(["kept" if ok else "quarantined" for ok in kept], pa.string()),
        "reason": pa.array(["" if ok else "engine_output_invalid" for ok in kept], pa.string()),
        "detail": pa.array([e or "" for e in errors], pa.string()),
        "findings": pa.array(findings, pa.string()),
        "impression": pa.array(impression, pa.string()),
        "attempts": batch.column("out_attempts").cast(pa.int32()),
        "labels": pa.array(labels, LABELS_TYPE),
    }
    out = drop_engine_columns(batch)
    for name, arr in new.items():
        out = out.append_column(name, arr)
    return out.select(STD_SCHEMA.names).cast(STD_SCHEMA)


def run_standardize(engine: TextEngine, store: OutputStore, expected: dict[str, int], cfg: NormalizeConfig,
                    progress: Callable[[str, dict], None]) -> dict[str, int]:  # fmt: skip
    """Standardize every pending input shard; returns the shard stage's stats."""
    def build(keys: list[str]):
        ds = read_shards(store, [f"_work/input/{k}.parquet" for k in keys])
        ds = ds.map_batches(_std_inputs, batch_format="pyarrow")
        ds = engine.apply(ds, "standardize")
        return ds.map_batches(_std_outputs, batch_format="pyarrow")

    wave = None if engine.streaming else cfg.wave_shards
    return run_shard_stage("standardize", store, STD_DIR, expected, build, progress, empty=STD_SCHEMA, wave=wave)

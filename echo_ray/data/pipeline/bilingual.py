"""Stage 4, bilingual augmentation: a seeded 50 % of studies also get a Chinese copy (所见 / 结论).

Selection is a hash of (seed, uid) against `bilingual_fraction`, so it does not depend on order,
sharding or reruns. Selected studies (kept after dedup) go through the engine's "translate" task
(prompt in engines/prompts.py: keep medical terms, numbers, laterality and structure; the answer
must be the same JSON in Chinese). A failed translation is recorded as `translation_failed` with
the engine's error; the English row is unaffected. The rules engine has no translator: the stage
says so once and is skipped; it never fakes a translation.

Usage:
    stats = run_bilingual(engine, store, dedup_table, std_shards, cfg, progress)
"""

from __future__ import annotations

import hashlib
import logging
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from echo_ray.config import NormalizeConfig
from echo_ray.data.pipeline.shards import read_shards, run_shard_stage
from echo_ray.data.pipeline.standardize import STD_DIR, STD_SCHEMA, drop_engine_columns, engine_inputs
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.engines.base import TextEngine

log = logging.getLogger("echo_ray.normalize")
ZH_DIR = "_work/translate"


def no_translator_note(engine: TextEngine) -> str:
    return f"the {engine.kind} engine has no translator; bilingual augmentation skipped"


def selected_for_translation(uid: str, seed: int, fraction: float) -> bool:
    """Seeded, order-free coin flip with P(True) = fraction."""
    h = int.from_bytes(hashlib.sha256(f"{seed}:{uid}".encode("utf-8")).digest()[:8], "big")
    return h / 2.0**64 < fraction


def expected_rows(dedup: pa.Table, shards: list[str], cfg: NormalizeConfig) -> dict[str, int]:
    """Shard -> number of its rows to translate (kept, not a duplicate, selected)."""
    out = {k: 0 for k in shards}
    if dedup.num_rows == 0:
        return out
    for uid, shard, dup in zip(*(dedup.column(c).to_pylist() for c in ("uid", "shard", "duplicate_of"))):
        if not dup and selected_for_translation(uid, cfg.seed, cfg.bilingual_fraction):
            out[shard] += 1
    return out


def _select(batch: pa.Table, duplicates: frozenset, seed: int, fraction: float) -> pa.Table:
    keep = [
        status == "kept" and uid not in duplicates and selected_for_translation(uid, seed, fraction)
        for uid, status in zip(batch.column("uid").to_pylist(), batch.column("status").to_pylist())
    ]
    return batch.filter(pa.array(keep, pa.bool_()))


def _zh_outputs(batch: pa.Table) -> pa.Table:
    errors = batch.column("out_error").to_pylist()
    new = {
        "status": pa.array(["kept" if not e else "translation_failed" for e in errors], pa.string()),
        "reason": pa.array(["" if not e else "translation_invalid" for e in errors], pa.string()),
        "detail": pa.array(errors, pa.string()),
        "findings": batch.column("out_findings"),
        "impression": batch.column("out_impression"),
        "attempts": batch.column("out_attempts").cast(pa.int32()),
    }
    out = drop_engine_columns(batch).drop_columns(list(new))
    for name, arr in new.items():
        out = out.append_column(name, arr)
    return out.select(STD_SCHEMA.names).cast(STD_SCHEMA)


def run_bilingual(engine: TextEngine, store: OutputStore, dedup: pa.Table, shards: list[str],
                  cfg: NormalizeConfig, progress: Callable[[str, dict], None]) -> dict:  # fmt: skip
    """Translate the selected studies shard by shard (resumable); or skip, said once."""
    if not engine.translates:
        note = no_translator_note(engine)
        log.warning("bilingual: %s", note)
        return {"status": "skipped", "reason": note}
    if cfg.bilingual_fraction <= 0:
        return {"status": "skipped", "reason": "bilingual_fraction is 0"}
    pairs = zip(dedup.column("uid").to_pylist(), dedup.column("duplicate_of").to_pylist())
    removed = frozenset(uid for uid, dup in pairs if dup)
    expected = expected_rows(dedup, shards, cfg)

    def build(keys: list[str]):
        ds = read_shards(store, [f"{STD_DIR}/{k}.parquet" for k in keys])
        ds = ds.map_batches(_select, batch_format="pyarrow",
                            fn_kwargs={"duplicates": removed, "seed": cfg.seed, "fraction": cfg.bilingual_fraction})  # fmt: skip
        ds = ds.map_batches(lambda b: engine_inputs(b, "findings", "impression"), batch_format="pyarrow")
        ds = engine.apply(ds, "translate")
        return ds.map_batches(_zh_outputs, batch_format="pyarrow")

    wave = None if engine.streaming else cfg.wave_shards
    stats = run_shard_stage("translate", store, ZH_DIR, expected, build, progress, empty=STD_SCHEMA, wave=wave)
    return {"status": "done", "selected": sum(expected.values()), **stats}


def translated(store: OutputStore, shards: list[str]) -> pa.Table:
    """All translation rows (uid, status) written so far."""
    parts = [store.read_table(f"{ZH_DIR}/{k}.parquet", columns=["uid", "status", "reason"]) for k in shards
             if store.exists(f"{ZH_DIR}/{k}.parquet")]  # fmt: skip
    return pa.concat_tables(parts) if parts else pa.table({"uid": pa.array([], pa.string()),
                                                            "status": pa.array([], pa.string()),
                                                            "reason": pa.array([], pa.string())})  # fmt: skip


def kept_translations(store: OutputStore, shards: list[str]) -> set[str]:
    t = translated(store, shards)
    return set(t.filter(pc.equal(t.column("status"), "kept")).column("uid").to_pylist()) if t.num_rows else set()

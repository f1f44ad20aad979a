"""Write the final dataset: per standardized shard, the train / eval / dcd rows and the rejects.

One Ray task per shard (Ray Data `map_batches` over shard descriptors) reads the standardized
shard and its Chinese twin, applies the dedup result and the split plan decided on the driver,
and writes
    <output>/{train,eval,dcd}/part-<shard>.parquet   OUTPUT_SCHEMA rows (dcd rows are train rows)
    <output>/rejected/{standardize,dedup,translate}-<shard>.parquet   REJECT_SCHEMA rows
The step is cheap and deterministic, so a rerun redoes it (after clearing the old final files)
instead of tracking it per shard. Returns per-shard counts for the manifest.

Usage:
    summaries = run_assemble(plans, store, cfg)   # plans: shard -> {"split", "dcd", "dedup"}
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import pyarrow as pa

from echo_ray.data.pipeline.bilingual import ZH_DIR
from echo_ray.data.pipeline.standardize import STD_DIR
from echo_ray.data.pipeline.store import OutputStore
from echo_ray.data.schema import OUTPUT_SCHEMA, REJECT_SCHEMA, map_to_dict, to_table
from echo_ray.report import format_report

SPLITS = ("train", "eval", "dcd")
FINAL_DIRS = SPLITS + ("rejected",)


def _output_row(row: dict, language: str) -> dict:
    return {
        **row,
        "language": language,
        "report": format_report(row["findings"], row["impression"], language),
        "labels": map_to_dict(row.get("labels")),
    }


def _reject(row: dict, status: str, stage: str, reason: str, detail: str, dup: str = "") -> dict:
    return {**row, "status": status, "stage": stage, "reason": reason, "detail": detail, "duplicate_of": dup}


def assemble_shard(shard: str, plan: dict[str, Any], store: OutputStore) -> dict[str, Any]:
    """Write one shard's final rows (see module doc); returns its counts."""
    split_of, dedup = plan["split"], plan["dedup"]
    dcd = {tuple(x) for x in plan["dcd"]}
    rows: dict[str, list[dict]] = {s: [] for s in SPLITS}
    rejects: dict[str, list[dict]] = {"standardize": [], "dedup": [], "translate": []}
    counts: Counter = Counter()
    for r in store.read_table(f"{STD_DIR}/{shard}.parquet").to_pylist():
        if r["status"] != "kept":
            rejects["standardize"].append(_reject(r, "quarantined", "standardize", r["reason"], r["detail"]))
        elif r["uid"] in dedup:
            dup, sim, kind = dedup[r["uid"]]
            detail = f"{kind} duplicate of {dup} (cosine {sim:.3f})"
            rejects["dedup"].append(_reject(r, "deduplicated", "dedup", f"{kind}_duplicate", detail, dup))
        else:
            split = split_of[r["uid"]]
            rows[split].append(_output_row(r, "en"))
            if (r["uid"], "en") in dcd:
                rows["dcd"].append(rows[split][-1])
    if store.exists(f"{ZH_DIR}/{shard}.parquet"):
        for r in store.read_table(f"{ZH_DIR}/{shard}.parquet").to_pylist():
            if r["status"] != "kept":
                rejects["translate"].append(_reject(r, "translation_failed", "translate", r["reason"], r["detail"]))
                continue
            split = split_of[r["uid"]]
            rows[split].append(_output_row(r, "zh"))
            if (r["uid"], "zh") in dcd:
                rows["dcd"].append(rows[split][-1])
    for split, items in rows.items():
        if items:
            store.write_table(f"{split}/part-{shard}.parquet", to_table(items, OUTPUT_SCHEMA))
        for it in items:
            counts[f"{split}|{it['language']}|{it['source']}"] += 1
    for stage, items in rejects.items():
        if items:
            store.write_table(f"rejected/{stage}-{shard}.parquet", to_table(items, REJECT_SCHEMA))
        for it in items:
            counts[f"reject|{it['status']}|{it['source']}|{it['reason']}"] += 1
    return {"shard": shard, "counts": dict(counts)}


def _assemble_batch(batch: pa.Table, store: OutputStore) -> pa.Table:
    out = []
    for shard, plan in zip(batch.column("shard").to_pylist(), batch.column("plan").to_pylist()):
        out.append(json.dumps(assemble_shard(shard, json.loads(plan), store)))
    return pa.table({"summary": out})


def run_assemble(plans: dict[str, dict[str, Any]], store: OutputStore, num_cpus: float) -> list[dict[str, Any]]:
    """Clear old final files, then assemble every shard in parallel; returns per-shard counts."""
    import ray.data

    for d in SPLITS:
        store.delete_dir(d)
    for f in store.listdir("rejected", ".parquet"):
        if not f.split("/")[-1].startswith("prepare-"):
            store.delete_file(f)
    if not plans:
        return []
    items = [{"shard": k, "plan": json.dumps(v)} for k, v in sorted(plans.items())]
    ds = ray.data.from_items(items, override_num_blocks=min(len(items), 64))
    ds = ds.map_batches(_assemble_batch, batch_size=1, batch_format="pyarrow", num_cpus=num_cpus,
                        fn_kwargs={"store": store})  # fmt: skip
    return [json.loads(r["summary"]) for r in ds.iter_rows()]

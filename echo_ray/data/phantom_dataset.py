"""Turn a phantom corpus into the normalized dataset layout the training stages read, without the
normalization pipeline: each raw report is split into sections (`parse_report_text`) and the
target is ``format_report(raw findings, raw impression)``. Small and fast, for tests and the demo;
the real pipeline (echo_ray.data.pipeline) writes the same layout with standardized text.

Layout (the contract of echo_ray.data.schema.OUTPUT_SCHEMA):
    <out>/manifest.json
    <out>/<split>/part-00000.parquet     splits: train, eval, dcd

Usage:
    write_phantom_dataset("phantom/", "data/phantom_norm", eval_rows=2, dcd_rows=2)
    rows = phantom_rows("phantom/")                 # the same rows as dicts
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from echo_ray.data.phantom import read_phantom
from echo_ray.data.schema import OUTPUT_SCHEMA, image, make_uid, to_table
from echo_ray.data.sources.sections import parse_report_text
from echo_ray.errors import InputError
from echo_ray.report import format_report

SPLITS = ("train", "eval", "dcd")


def phantom_rows(corpus_dir: str | Path) -> list[dict]:
    """Phantom studies as OUTPUT_SCHEMA rows (English; images with absolute paths)."""
    rows = []
    for rec in read_phantom(Path(corpus_dir).resolve()):  # the contract wants absolute image paths
        sec = parse_report_text(rec["report"])
        rows.append(
            {
                "uid": make_uid("phantom", rec["study_id"]),
                "study_id": rec["study_id"],
                "source": "phantom",
                "language": "en",
                "findings": sec.findings,
                "impression": sec.impression,
                "report": format_report(sec.findings, sec.impression, "en"),
                "raw_findings": sec.findings,
                "raw_impression": sec.impression,
                "indication": sec.indication,
                "images": [image(im["path"], im["view"]) for im in rec["images"]],
                "labels": rec["labels"],
            }
        )
    return rows


def write_rows(rows: list[dict], out_dir: str | Path, split: str, shard_rows: int = 512) -> list[str]:
    """Write rows as Parquet shards of `split`; returns the shard paths relative to `out_dir`."""
    target = Path(out_dir) / split
    target.mkdir(parents=True, exist_ok=True)
    files = []
    for k, start in enumerate(range(0, len(rows), shard_rows)):
        name = f"{split}/part-{k:05d}.parquet"
        pq.write_table(to_table(rows[start : start + shard_rows], OUTPUT_SCHEMA), Path(out_dir) / name)
        files.append(name)
    return files


def write_phantom_dataset(
    corpus_dir: str | Path, out_dir: str | Path, eval_rows: int = 0, dcd_rows: int = 0, shard_rows: int = 512
) -> Path:
    """Split the corpus (eval first, then dcd, the rest train) and write the layout; returns out_dir."""
    rows = phantom_rows(corpus_dir)
    n_train = len(rows) - eval_rows - dcd_rows
    if n_train <= 0:
        raise InputError(f"phantom corpus has {len(rows)} studies; not enough for {eval_rows} eval + {dcd_rows} dcd rows")
    parts = {"eval": rows[:eval_rows], "dcd": rows[eval_rows : eval_rows + dcd_rows], "train": rows[eval_rows + dcd_rows :]}
    out = Path(out_dir)
    manifest = {"source": "phantom", "synthetic": True, "target": "format_report(raw sections)", "splits": {}}
    for split in SPLITS:
        files = write_rows(parts[split], out, split, shard_rows) if parts[split] else []
        manifest["splits"][split] = {"rows": len(parts[split]), "files": files}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return out

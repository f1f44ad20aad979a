"""Micro-batches from a Ray Data iterator with a resumable (epoch, batch) position; phantom dataset."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from echo_ray.data.phantom_dataset import write_phantom_dataset
from echo_ray.data.schema import OUTPUT_SCHEMA
from echo_ray.errors import InputError
from echo_ray.report import parse_report
from echo_ray.train.data import DataPosition, row_batches


def test_row_batches_resume_inside_an_epoch(ray_cluster):
    ds = ray_cluster.data.from_items([{"study_id": str(i)} for i in range(10)], override_num_blocks=1)
    it = row_batches(ds.iterator(), 3, DataPosition(epoch=1, batches=2))
    rows, pos = next(it)
    assert [r["study_id"] for r in rows] == ["6", "7", "8"] and pos == DataPosition(1, 3)
    rows, pos = next(it)  # the last row of the epoch is dropped: every rank sees whole batches
    assert [r["study_id"] for r in rows] == ["0", "1", "2"] and pos == DataPosition(2, 1)
    with pytest.raises(InputError, match="fewer than batch_size=11 rows"):
        next(row_batches(ds.iterator(), 11))


def test_phantom_dataset_layout(phantom_dir, tmp_path):
    out = write_phantom_dataset(phantom_dir, tmp_path / "norm", eval_rows=2, dcd_rows=3)
    manifest = json.loads((out / "manifest.json").read_text())
    assert {k: v["rows"] for k, v in manifest["splits"].items()} == {"train": 7, "eval": 2, "dcd": 3}
    table = pq.read_table(next((out / "train").glob("*.parquet")))
    assert table.schema.equals(OUTPUT_SCHEMA)
    for row in table.to_pylist():
        assert row["report"].startswith("Findings:") and parse_report(row["report"]).complete
        assert all(im["path"].startswith("/") for im in row["images"])
    with pytest.raises(InputError, match="not enough"):
        write_phantom_dataset(phantom_dir, tmp_path / "x", eval_rows=12)

"""The normalization output location (local directory or s3://) as files under one root.

A thin view over `echo_ray.storage` (the only module that knows S3): paths are relative and
'/'-separated, tables are Parquet, and every write is atomic per file (storage.write_to), so a
killed run never leaves a half-written shard that a rerun would mistake for finished. The store is
pickled into Ray tasks with its filesystem, which carries the endpoint and region but no
credentials: each worker resolves (and refreshes) its own through the AWS default chain.

Usage:
    store = OutputStore("s3://bucket/normalized")
    store.write_table("train/part-00000.parquet", table)
    store.exists("_work/fingerprint.json"); store.read_json("manifest.json")
"""

from __future__ import annotations

import io
import json
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from echo_ray import storage


class OutputStore:
    """Files under one root (local dir or s3://bucket/prefix); paths are relative, '/'-separated."""

    def __init__(self, root: str):
        self.uri = str(root).rstrip("/")
        self.local = not storage.is_s3(self.uri)
        self.fs, self.base = storage.resolve_fs(self.uri)

    def path(self, rel: str) -> str:
        """The filesystem path of `rel` (what pyarrow / Ray Data read with `self.fs`)."""
        return f"{self.base}/{rel}".rstrip("/")

    def display(self, rel: str) -> str:
        return f"{self.uri}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def listdir(self, rel: str, suffix: str = "") -> list[str]:
        """Relative paths of the files directly under `rel` ending with `suffix`, sorted."""
        info = self.fs.get_file_info(pafs.FileSelector(self.path(rel), allow_not_found=True))
        names = [i.base_name for i in info if i.type == pafs.FileType.File and i.base_name.endswith(suffix)]
        return sorted(f"{rel}/{n}" for n in names if not n.startswith("."))

    def _write(self, rel: str, data: bytes) -> None:
        storage.write_to(self.fs, self.path(rel), data, self.display(rel))

    def write_table(self, rel: str, table: pa.Table) -> None:
        buf = io.BytesIO()
        pq.write_table(table, buf)
        self._write(rel, buf.getvalue())

    def read_table(self, rel: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.path(rel), filesystem=self.fs, columns=columns)

    def write_json(self, rel: str, obj: Any) -> None:
        self._write(rel, json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False).encode("utf-8"))

    def write_text(self, rel: str, text: str) -> None:
        self._write(rel, text.encode("utf-8"))

    def read_json(self, rel: str) -> Any:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return json.loads(f.read().decode("utf-8"))

    def delete_file(self, rel: str) -> None:
        self.fs.delete_file(self.path(rel))

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

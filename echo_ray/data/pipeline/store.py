"""The normalization output location (local directory or s3://) through one pyarrow filesystem.

Every file the pipeline writes goes through an `OutputStore`, so local and S3 runs share one code
path. Writes are atomic per file: locally to a temporary name renamed into place; on S3 an object
becomes visible only when its upload completes. A killed run therefore never leaves a half-written
shard that a rerun would mistake for finished.
S3 credentials come from boto3's standard chain and an S3-compatible endpoint from
`AWS_ENDPOINT_URL` (as in echo_ray.storage); both travel with the pickled store to Ray workers.

Usage:
    store = OutputStore("s3://bucket/normalized")
    store.write_table("train/part-00000.parquet", table)
    store.exists("_work/fingerprint.json"); store.read_json("manifest.json")
"""

from __future__ import annotations

import io
import json
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from echo_ray.errors import InputError
from echo_ray.storage import is_s3, split_s3


def _s3_filesystem() -> pafs.S3FileSystem:
    import boto3

    session = boto3.Session()
    creds = session.get_credentials()
    kwargs: dict[str, Any] = {"region": session.region_name or os.environ.get("AWS_DEFAULT_REGION", "us-east-1")}
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        kwargs.update(access_key=frozen.access_key, secret_key=frozen.secret_key)
        if frozen.token:
            kwargs["session_token"] = frozen.token
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "")
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**kwargs)


class OutputStore:
    """Files under one root (local dir or s3://bucket/prefix); paths are relative, '/'-separated."""

    def __init__(self, root: str):
        self.uri = str(root).rstrip("/")
        if is_s3(self.uri):
            bucket, key = split_s3(self.uri)
            self.fs: pafs.FileSystem = _s3_filesystem()
            self.base = f"{bucket}/{key}".rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = os.path.abspath(os.path.expanduser(self.uri))
        self.local = not is_s3(self.uri)

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
        target = self.path(rel)
        parent = target.rsplit("/", 1)[0]
        try:
            if not self.local:  # S3 has no directories; an object appears whole when its upload completes
                with self.fs.open_output_stream(target) as f:
                    f.write(data)
                return
            self.fs.create_dir(parent, recursive=True)
            tmp = f"{parent}/.{target.rsplit('/', 1)[1]}.{uuid.uuid4().hex}.tmp"
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            os.replace(tmp, target)
        except OSError as e:
            raise InputError(f"cannot write {self.display(rel)}: {e}") from None

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

    def delete_dir(self, rel: str) -> None:
        if self.exists(rel):
            self.fs.delete_dir(self.path(rel))

"""The one storage layer: local paths and s3:// URIs through pyarrow's filesystems.

Every read, write, listing and existence test of the project goes through here, so local and S3
runs share one code path and nothing else in the package knows about S3. The S3 filesystem is
built without keys: each process (driver, Ray worker) resolves credentials itself through the AWS
SDK's default chain (environment, shared profile, SSO, instance role) on every request, so
temporary credentials that rotate during a long run are picked up, and a filesystem pickled into a
Ray task carries no secret. An S3-compatible endpoint (MinIO, a local moto server in tests) comes
from `AWS_ENDPOINT_URL`; the region from `AWS_REGION` / `AWS_DEFAULT_REGION` (else the SDK's own).

Also here: the download-once checkpoint cache. Images are decoded in echo_ray.data.images
(`read_image`, from the bytes read here); the storage-root policy for a config's stage paths is
echo_ray.config.paths.

Usage:
    write_text("s3://bucket/runs/rad/echo_config.yaml", text)
    files = list_files("s3://bucket/data/train", ".parquet"); fs, path = resolve_fs(files[0])
    local = resolve_local("s3://bucket/models/echo", cache_dir="~/.cache/echo_ray/models")
    raw = read_bytes("s3://bucket/images/PA.png", "image")
"""

from __future__ import annotations

import functools
import os
import uuid
from pathlib import Path
from typing import Any

from pyarrow import fs as pafs

from echo_ray.errors import InputError

_CHUNK = 8 << 20


def is_s3(uri: str | Path) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(f"malformed S3 URI (no bucket): {uri}")
    return bucket, key.strip("/")


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


@functools.lru_cache(maxsize=8)
def _s3(region: str, endpoint: str) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {}  # no keys: the SDK's default chain resolves (and refreshes) them per request
    if region:
        kwargs["region"] = region
    if endpoint:
        scheme, _, host = endpoint.partition("://")
        kwargs.update(endpoint_override=host or scheme, scheme=scheme if host else "https")
    return pafs.S3FileSystem(**kwargs)


def s3_filesystem() -> pafs.S3FileSystem:
    """This process's S3 filesystem (one per region/endpoint setting; holds no credentials)."""
    env = os.environ
    region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or ""
    return _s3(region, env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "")


def resolve_fs(uri: str | Path) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); local paths become absolute, s3://b/k becomes 'b/k'."""
    if is_s3(uri):
        bucket, key = split_s3(str(uri))
        return s3_filesystem(), f"{bucket}/{key}".rstrip("/")
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [e.__class__.__name__])[0]


def file_type(uri: str) -> pafs.FileType:
    filesystem, path = resolve_fs(uri)
    try:
        return filesystem.get_file_info(path).type
    except OSError as e:
        raise InputError(f"cannot read {uri}: {_first_line(e)}") from None


def exists(uri: str) -> bool:
    return file_type(uri) != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    return file_type(uri) == pafs.FileType.File


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Files directly under directory `uri` ending in `suffix` (hidden ones skipped), as URIs/paths, sorted."""
    filesystem, path = resolve_fs(uri)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise InputError(f"cannot list {uri}: {_first_line(e)}") from None
    names = sorted(i.base_name for i in infos
                   if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith("."))  # fmt: skip
    return [join(uri, n) for n in names] if is_s3(uri) else [str(Path(path) / n) for n in names]


def read_bytes(uri: str, what: str = "") -> bytes:
    """The whole object/file; InputError naming it (and `what` it is) when it cannot be read."""
    filesystem, path = resolve_fs(uri)
    try:
        with filesystem.open_input_stream(path) as f:
            return f.read()
    except (OSError, FileNotFoundError) as e:
        raise InputError(f"cannot read {what + ' ' if what else ''}{uri}: {_first_line(e)}") from None


def read_parquet(uri: str, columns: list[str] | None = None):
    """One Parquet file as a pyarrow Table; InputError naming it when it cannot be read."""
    import pyarrow.parquet as pq

    filesystem, path = resolve_fs(uri)
    try:
        return pq.read_table(path, filesystem=filesystem, columns=columns)
    except OSError as e:
        raise InputError(f"cannot read {uri}: {_first_line(e)}") from None


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_to(filesystem: pafs.FileSystem, path: str, data: bytes, shown: str) -> None:
    """Write `data` to `path` of `filesystem`, atomically per file: locally to a temporary name
    renamed into place; on S3 an object appears whole when its upload completes. A killed run never
    leaves a half-written file that a rerun would trust. Errors name `shown` (the URI)."""
    try:
        if not isinstance(filesystem, pafs.LocalFileSystem):
            with filesystem.open_output_stream(path) as f:
                f.write(data)
            return
        parent, name = path.rsplit("/", 1)
        filesystem.create_dir(parent, recursive=True)
        tmp = f"{parent}/.{name}.{uuid.uuid4().hex}.tmp"
        with filesystem.open_output_stream(tmp) as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:
        raise InputError(f"cannot write {shown}: {_first_line(e)}") from None


def write_bytes(uri: str, data: bytes) -> None:
    filesystem, path = resolve_fs(uri)
    write_to(filesystem, path, data, uri)


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def copy_tree(src_fs: pafs.FileSystem, src_path: str, dst_uri: str) -> str:
    """Copy a directory tree to `dst_uri` (replacing files of the same name); returns dst_uri."""
    dst_fs, dst_path = resolve_fs(dst_uri)
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
    return dst_uri


def upload_dir(local: str | Path, dst_uri: str) -> int:
    """Copy every file under local directory `local` to `dst_uri`; returns the file count."""
    root = Path(local).resolve()
    copy_tree(pafs.LocalFileSystem(), str(root), dst_uri)
    return sum(1 for f in root.rglob("*") if f.is_file())


def download_dir(src_uri: str, local: str | Path, skip_suffixes: tuple[str, ...] = ()) -> Path:
    """Copy the files directly under `src_uri` to a local directory, skipping some suffixes."""
    filesystem, path = resolve_fs(src_uri)
    out = Path(local)
    out.mkdir(parents=True, exist_ok=True)
    for info in filesystem.get_file_info(pafs.FileSelector(path)):
        if info.type == pafs.FileType.File and not info.base_name.endswith(skip_suffixes):
            with filesystem.open_input_stream(info.path) as src:
                (out / info.base_name).write_bytes(src.read())
    return out


def _fetch(filesystem: pafs.FileSystem, src: str, dest: Path, size: int, uri: str) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(dest.suffix + ".part")
    with filesystem.open_input_stream(src) as f, open(tmp, "wb") as out:
        while chunk := f.read(_CHUNK):
            out.write(chunk)
    if tmp.stat().st_size != size:
        tmp.unlink()
        raise InputError(f"size mismatch downloading {uri}")
    tmp.replace(dest)


def download_prefix(uri: str, cache_dir: str | Path) -> Path:
    """Mirror every object under an s3:// prefix into the cache; re-download only on size mismatch."""
    bucket, prefix = split_s3(uri)
    target = Path(cache_dir).expanduser() / bucket / prefix
    filesystem, root = resolve_fs(uri)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        files = [i for i in infos if i.type == pafs.FileType.File]
        for info in files:
            rel = info.path[len(root) :].lstrip("/")
            dest = target / rel
            if not (dest.is_file() and dest.stat().st_size == info.size):
                _fetch(filesystem, info.path, dest, info.size, f"s3://{info.path}")
    except InputError:
        raise
    except OSError as e:  # no credentials, no bucket, access denied
        raise InputError(f"cannot read {uri}: {_first_line(e)}") from None
    if not files:
        raise InputError(f"no objects under {uri}")
    return target


def resolve_local(path: str, cache_dir: str | Path = "~/.cache/echo_ray/models") -> Path:
    """A local directory for `path`: itself, or the cached mirror of an s3:// prefix."""
    if is_s3(path):
        return download_prefix(path, cache_dir)
    p = Path(path).expanduser()
    if not p.exists():
        raise InputError(f"model path not found: {p}")
    return p


def shown_path(path: str | Path) -> str:
    """A path as printed to users: s3:// as is, local paths absolute (so a job's output is findable)."""
    return str(path) if is_s3(str(path)) else str(Path(path).expanduser().resolve())

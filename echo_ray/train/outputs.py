"""Training outputs on local disk or s3:// through pyarrow's filesystems (the same layer Ray Train's
storage uses), so checkpoints, the final export and logs go wherever `output_dir` points.
Credentials and an S3-compatible endpoint come from the standard AWS environment
(`AWS_ENDPOINT_URL` included), never from our configs.

Usage:
    fs, path = resolve_fs("s3://bucket/runs/rad")       # or a local directory
    copy_tree(ckpt.filesystem, f"{ckpt.path}/model", "runs/rad/final")
    write_text("s3://bucket/runs/rad/echo_config.yaml", text)
"""

from __future__ import annotations

from pathlib import Path

from pyarrow import fs as pafs

from echo_ray.errors import InputError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def resolve_fs(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it); local paths become absolute."""
    if is_s3(uri):
        try:
            return pafs.FileSystem.from_uri(str(uri))
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError for bad URIs and regions
            raise InputError(f"cannot open {uri}: {e}") from None
    return pafs.LocalFileSystem(), str(Path(uri).expanduser().resolve())


def join(uri: str, *parts: str) -> str:
    return "/".join([str(uri).rstrip("/"), *parts])


def file_type(uri: str) -> pafs.FileType:
    filesystem, path = resolve_fs(uri)
    try:
        return filesystem.get_file_info(path).type
    except OSError as e:
        raise InputError(f"cannot read {uri}: {e}") from None


def exists(uri: str) -> bool:
    return file_type(uri) != pafs.FileType.NotFound


def list_files(uri: str, suffix: str) -> list[str]:
    """Files directly under directory `uri` ending in `suffix`, as URIs/paths, sorted."""
    filesystem, path = resolve_fs(uri)
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    except OSError as e:
        raise InputError(f"cannot list {uri}: {e}") from None
    names = sorted(i.base_name for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(suffix))
    return [join(uri, n) for n in names] if is_s3(uri) else [str(Path(path) / n) for n in names]


def read_text(uri: str) -> str:
    filesystem, path = resolve_fs(uri)
    with filesystem.open_input_stream(path) as f:
        return f.read().decode("utf-8")


def write_text(uri: str, text: str) -> None:
    filesystem, path = resolve_fs(uri)
    filesystem.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with filesystem.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def copy_tree(src_fs: pafs.FileSystem, src_path: str, dst_uri: str) -> str:
    """Copy a directory tree to `dst_uri` (replacing files of the same name); returns dst_uri."""
    dst_fs, dst_path = resolve_fs(dst_uri)
    dst_fs.create_dir(dst_path, recursive=True)
    pafs.copy_files(src_path, dst_path, source_filesystem=src_fs, destination_filesystem=dst_fs)
    return dst_uri


def upload_dir(local: str | Path, dst_uri: str) -> str:
    return copy_tree(pafs.LocalFileSystem(), str(Path(local).resolve()), dst_uri)


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

"""Local paths and s3:// URIs: download-once cache for checkpoints, and uploads of outputs.

Credentials come only from boto3's standard chain (environment, shared profile, instance role);
no config file of ours ever holds a key. An S3-compatible endpoint (MinIO, a local moto server in
tests) is picked up from `AWS_ENDPOINT_URL`, which boto3 reads itself.

Usage:
    local = resolve_local("s3://bucket/models/echo", cache_dir="~/.cache/echo_ray/models")
    upload_dir("runs/rad/final", "s3://bucket/runs/rad/final")
"""

from __future__ import annotations

from pathlib import Path

from echo_ray.errors import InputError


def is_s3(uri: str) -> bool:
    return str(uri).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """'s3://bucket/a/b' -> ('bucket', 'a/b')."""
    rest = str(uri)[len("s3://") :]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise InputError(f"malformed S3 URI (no bucket): {uri}")
    return bucket, key.strip("/")


def s3_client():
    import boto3

    return boto3.client("s3")


def download_prefix(uri: str, cache_dir: str | Path) -> Path:
    """Mirror every object under an s3:// prefix into the cache; re-download only on size mismatch."""
    bucket, prefix = split_s3(uri)
    target = Path(cache_dir).expanduser() / bucket / prefix
    client = s3_client()
    paginator = client.get_paginator("list_objects_v2")
    found = 0
    try:
        for page in paginator.paginate(Bucket=bucket, Prefix=prefix + "/" if prefix else ""):
            for obj in page.get("Contents", []):
                rel = obj["Key"][len(prefix) :].lstrip("/")
                if not rel or rel.endswith("/"):
                    continue
                found += 1
                dest = target / rel
                if dest.is_file() and dest.stat().st_size == obj["Size"]:
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_suffix(dest.suffix + ".part")
                client.download_file(bucket, obj["Key"], str(tmp))
                if tmp.stat().st_size != obj["Size"]:
                    tmp.unlink()
                    raise InputError(f"size mismatch downloading s3://{bucket}/{obj['Key']}")
                tmp.replace(dest)
    except InputError:
        raise
    except Exception as e:  # botocore errors: no credentials, no bucket, access denied
        raise InputError(f"cannot read {uri}: {e.__class__.__name__}: {e}") from None
    if found == 0:
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


def upload_dir(local: str | Path, uri: str) -> int:
    """Upload every file under `local` to the s3:// prefix `uri`; returns the file count."""
    bucket, prefix = split_s3(uri)
    client = s3_client()
    n = 0
    for f in sorted(Path(local).rglob("*")):
        if f.is_file():
            key = f"{prefix}/{f.relative_to(local).as_posix()}".lstrip("/")
            client.upload_file(str(f), bucket, key)
            n += 1
    return n

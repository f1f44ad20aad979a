"""Local paths and s3:// URIs: download-once cache for checkpoints, and uploads of outputs.

Credentials come only from boto3's standard chain (environment, shared profile, instance role);
no config file of ours ever holds a key. An S3-compatible endpoint (MinIO, a local moto server in
tests) is picked up from `AWS_ENDPOINT_URL`, which boto3 reads itself.

Usage:
    local = resolve_local("s3://bucket/models/echo", cache_dir="~/.cache/echo_ray/models")
    upload_dir("runs/rad/final", "s3://bucket/runs/rad/final")
    cfg = resolve_stage_paths(cfg)   # relative stage paths against storage.root; refused under a Ray job
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from echo_ray.errors import ConfigError, InputError

# Set by Ray's job supervisor for every `ray job submit` entrypoint (ray/dashboard/modules/job).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"


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


def shown_path(path: str | Path) -> str:
    """A path as printed to users: s3:// as is, local paths absolute (so a job's output is findable)."""
    return str(path) if is_s3(str(path)) else str(Path(path).expanduser().resolve())


def under_ray_job() -> bool:
    """True inside a `ray job submit` entrypoint, whose cwd is Ray's temporary copy of --working-dir."""
    return bool(os.environ.get(RAY_JOB_ENV))


def resolve_stage_path(path: str, root: str, what: str) -> str:
    """Absolute form of one stage path: s3:// and absolute paths as they are, relative ones under `root`.

    Without `root`, a relative path is resolved against the current directory, except under a Ray
    job, where the current directory is a temporary copy that nobody (and no later stage) will see:
    there it is a ConfigError naming the absolute and s3:// forms.
    """
    p = str(path)
    if not p or is_s3(p):
        return p
    if Path(p).expanduser().is_absolute():
        return str(Path(p).expanduser())
    if root:
        if is_s3(root):
            return f"{root.rstrip('/')}/{p}"
        base = Path(root).expanduser()
        if not base.is_absolute():
            raise ConfigError(f"storage.root must be an absolute directory or an s3:// prefix, got {root!r}")
        return str(base / p)
    if under_ray_job():
        raise ConfigError(
            f"{what} is the relative path {p!r}: under a Ray job it would resolve inside Ray's temporary copy of "
            f"the working directory, where nobody (and no later stage) finds it. Give an absolute path on shared "
            f"storage (e.g. /mnt/shared/echo/{p}) or an s3:// URI (s3://bucket/echo/{p}), or set the root every "
            f"stage shares: --set storage.root=/mnt/shared/echo"
        )
    return str(Path(p).resolve())


def _resolve_fields(section: Any, names: tuple[str, ...], root: str, prefix: str) -> Any:
    changes = {n: resolve_stage_path(getattr(section, n), root, f"{prefix}.{n}") for n in names}
    return dataclasses.replace(section, **changes)


def resolve_stage_paths(cfg: Any) -> Any:
    """A copy of the config tree with every stage's data and output paths in absolute (or s3://) form.

    Applied when `storage.root` is set or under a Ray job; otherwise relative paths stay as given
    (they resolve against the current directory, as usual on one machine).
    """
    root = cfg.storage.root
    if not root and not under_ray_job():
        return cfg
    norm = cfg.normalize
    sources = [dataclasses.replace(s, path=resolve_stage_path(s.path, root, f"normalize.sources[{s.name}].path"),
                                   images=resolve_stage_path(s.images, root, f"normalize.sources[{s.name}].images"))
               for s in norm.sources]  # fmt: skip
    norm = dataclasses.replace(norm, sources=sources, output=resolve_stage_path(norm.output, root, "normalize.output"))
    train = cfg.train
    stages = {name: _resolve_fields(getattr(train, name), ("init_from", "output_dir", "data"), root, f"train.{name}")
              for name in ("cpt", "rad", "dcd")}  # fmt: skip
    ev = _resolve_fields(cfg.eval, ("data", "output_dir"), root, "eval")
    return dataclasses.replace(cfg, normalize=norm, train=dataclasses.replace(train, **stages), eval=ev)

"""Where a config's stage paths point: relative data/output paths resolved against `storage.root`.

Every stage of a multi-node run must see the same files, so with `storage.root` set (an absolute
directory on shared storage or an s3:// prefix) every relative `data`/`output` path of the tree is
made absolute against it; under a Ray job without a root, a relative path is a ConfigError, because
the job's working directory is a temporary copy nobody else sees (echo_ray/storage.py reads and
writes whatever these resolve to).

Usage:
    cfg = resolve_stage_paths(load_config("configs/tiny.yaml"))    # at the entry point
    out = resolve_stage_path(args.out, cfg.storage.root, "--out")   # one path from a flag
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TypeVar

from echo_ray.config import EchoConfig
from echo_ray.errors import ConfigError
from echo_ray.storage import is_s3

# Set by Ray's job supervisor for every `ray job submit` entrypoint (ray/dashboard/modules/job).
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
S = TypeVar("S")


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


def _resolve_fields(section: S, names: tuple[str, ...], root: str, prefix: str) -> S:
    changes = {n: resolve_stage_path(getattr(section, n), root, f"{prefix}.{n}") for n in names}
    return dataclasses.replace(section, **changes)


def resolve_stage_paths(cfg: EchoConfig) -> EchoConfig:
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

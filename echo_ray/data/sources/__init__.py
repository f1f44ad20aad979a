"""Source adapters: one module per corpus, each reading the layout its distributor ships.

Every adapter module defines `NAME`, `list_tasks(spec) -> list[str]` (cheap, on the driver; raises
InputError when the input is missing or not in the expected layout) and
`read_task(spec, task) -> list[dict]` (RECORD_SCHEMA rows, run in Ray tasks). Records an adapter
cannot read cleanly come back with `issue` set, so the pipeline quarantines instead of dropping.

Usage:
    adapter = get_adapter("iu_xray")
    for task in adapter.list_tasks(spec):
        records = adapter.read_task(spec, task)
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from echo_ray.errors import EchoError

ADAPTERS: dict[str, str] = {
    "mimic_cxr": "echo_ray.data.sources.mimic_cxr",
    "chexpert_plus": "echo_ray.data.sources.chexpert_plus",
    "rexgradient": "echo_ray.data.sources.rexgradient",
    "iu_xray": "echo_ray.data.sources.iu_xray",
    "phantom": "echo_ray.data.sources.phantom",
}


def get_adapter(name: str) -> ModuleType:
    """The adapter module for source `name`; an unknown name is a one-line EchoError."""
    if name not in ADAPTERS:
        raise EchoError(f"unknown source {name!r}; known sources: {', '.join(sorted(ADAPTERS))}")
    return importlib.import_module(ADAPTERS[name])


def join_image(root: str, rel: str) -> str:
    """An image's absolute local path, or s3:// URI when the image root is on S3."""
    rel = str(rel).strip()
    if rel.startswith("s3://") or (os.path.isabs(rel) and not root.startswith("s3://")):
        return rel
    if root.startswith("s3://"):
        return f"{root.rstrip('/')}/{rel.lstrip('/')}"
    return os.path.abspath(os.path.join(root, rel))

"""Layering of the package, checked on the parsed imports (ast) of every module under echo_ray/.

* data/, engines/ and model/ never import eval/ (the shared report vocabulary is echo_ray.clinical);
* model/ imports neither the data package nor Ray or DeepSpeed;
* clinical/ depends on nothing of the package but itself and echo_ray.errors;
* only echo_ray/storage.py reaches S3: no other module imports boto3/botocore/s3fs or names
  pyarrow's S3FileSystem / FileSystem.from_uri.
Imports inside functions count as much as those at the top of a file.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echo_ray"
S3_MODULES = ("boto3", "botocore", "s3fs", "aiobotocore")
S3_NAMES = ("S3FileSystem", "from_uri")


def _modules() -> dict[str, ast.Module]:
    return {p.relative_to(PACKAGE.parent).as_posix(): ast.parse(p.read_text(encoding="utf-8"), str(p))
            for p in sorted(PACKAGE.rglob("*.py"))}  # fmt: skip


def _imported(tree: ast.Module) -> set[str]:
    """Every module name imported anywhere in the file ('from a.b import c' gives a.b and a.b.c)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _violations(path_prefixes: tuple[str, ...], banned: tuple[str, ...]) -> list[str]:
    out = []
    for path, tree in _modules().items():
        if path.startswith(path_prefixes):
            out += [f"{path} imports {n}" for n in sorted(_imported(tree)) if any(_under(n, b) for b in banned)]
    return out


def test_module_scan_sees_the_package():
    mods = _modules()
    assert "echo_ray/storage.py" in mods and "echo_ray/clinical/labeler.py" in mods and len(mods) > 100
    assert "echo_ray.clinical.labeler" in _imported(mods["echo_ray/eval/clinical.py"])


def test_lower_layers_do_not_import_eval():
    assert _violations(("echo_ray/data/", "echo_ray/engines/", "echo_ray/model/"), ("echo_ray.eval",)) == []


def test_model_imports_no_data_ray_or_deepspeed():
    assert _violations(("echo_ray/model/",), ("echo_ray.data", "ray", "deepspeed")) == []


def test_clinical_depends_only_on_itself():
    bad = [v for v in _violations(("echo_ray/clinical/",), ("echo_ray",))
           if not v.endswith(("echo_ray.errors", "echo_ray.errors.ConfigError", "echo_ray.errors.InputError"))
           and " imports echo_ray.clinical" not in v]  # fmt: skip
    assert bad == []


def test_only_storage_reaches_s3():
    offenders = []
    for path, tree in _modules().items():
        if path == "echo_ray/storage.py":
            continue
        offenders += [f"{path} imports {n}" for n in _imported(tree) if any(_under(n, m) for m in S3_MODULES)]
        for node in ast.walk(tree):
            name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
            if name in S3_NAMES:
                offenders.append(f"{path}:{node.lineno} uses {name}")
            if isinstance(node, ast.alias) and node.name in S3_NAMES:
                offenders.append(f"{path} imports {node.name}")
    assert offenders == []

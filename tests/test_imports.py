"""Layering of the package, checked on the parsed imports (ast) of every module under echo_ray/.

* data/, engines/ and model/ never import eval/ (the shared report vocabulary is echo_ray.clinical);
* model/ imports neither the data package nor Ray or DeepSpeed;
* clinical/ depends on nothing of the package but itself and echo_ray.errors;
* only echo_ray/storage.py reaches S3: no other module imports boto3/botocore/s3fs or names
  pyarrow's S3FileSystem / FileSystem.from_uri;
* Ray Train's controller unpickles the StageJob: importing echo_ray.train.job loads no transformers;
* no import circles among echo_ray modules, and none of the upward imports that were removed
  (storage reading images or holding the config's path policy, a data module importing the CLI,
  the decode engine taking its types from the reference decoder).
Imports inside functions count as much as those at the top of a file.

`python tests/test_imports.py [ROOT]` prints the package-internal import graph of ROOT/echo_ray
(modules, edges and cycles, all imports and module-level ones only) as one JSON object.
"""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "echo_ray"
S3_MODULES = ("boto3", "botocore", "s3fs", "aiobotocore")
S3_NAMES = ("S3FileSystem", "from_uri")


@functools.cache  # parsed once per session; read-only
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


@functools.cache
def _graph(package: Path | None = None, top_level_only: bool = False) -> dict[str, set[str]]:
    """Module -> the package modules it imports ('from a import b' names a.b when that is a module)."""
    package = package or PACKAGE
    trees = {}
    for p in sorted(package.rglob("*.py")):
        parts = p.relative_to(package.parent).with_suffix("").parts
        is_pkg = parts[-1] == "__init__"
        trees[".".join(parts[:-1] if is_pkg else parts)] = (ast.parse(p.read_text(encoding="utf-8")), is_pkg)
    graph = {}
    for mod, (tree, is_pkg) in trees.items():
        nodes = list(ast.walk(tree)) if not top_level_only else _top_level(tree.body)
        out: set[str] = set()
        for node in nodes:
            if isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name in trees)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    pkg = mod.split(".")[: len(mod.split(".")) - (not is_pkg) - (node.level - 1)]
                    base = ".".join([*pkg, *([node.module] if node.module else [])])
                out.update(f"{base}.{a.name}" if f"{base}.{a.name}" in trees else base for a in node.names)
        graph[mod] = {m for m in out if m in trees and m != mod}
    return graph


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    """Statements that run on import: the module body and the branches of its top-level if/try."""
    out = []
    for node in body:
        out.append(node)
        if isinstance(node, (ast.If, ast.Try)):
            out += _top_level([*node.body, *node.orelse, *getattr(node, "finalbody", []),
                               *(s for h in getattr(node, "handlers", []) for s in h.body)])  # fmt: skip
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root), on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w), on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_graph_sees_function_level_and_package_imports():
    g = _graph()
    assert "echo_ray.storage" in g["echo_ray.data.images"]  # module level
    assert "echo_ray.data.pipeline.driver" in g["echo_ray.data.pipeline.cli"]  # inside run_normalize
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycles():
    assert _cycles(_graph()) == []


def test_storage_only_reads_bytes():
    """storage.py knows files and S3, not images (data/images) or the config's paths (config/paths)."""
    assert _graph()["echo_ray.storage"] <= {"echo_ray.errors"}


def test_entry_points_are_imported_only_by_the_cli():
    """Subcommand modules take the --config/--set helpers from config/args, not from commands.py."""
    entry = {"echo_ray.cli", "echo_ray.commands", "echo_ray.demo"}
    assert [f"{m} imports {sorted(deps & entry)}" for m, deps in _graph().items()
            if deps & entry and m != "echo_ray.cli"] == []  # fmt: skip


def test_decoders_share_event_types_not_the_reference_decoder():
    """The engine and the consumers of decode events import echo_ray.decode.events, not blockwise."""
    g = _graph()
    engine = [m for m in g if m.startswith(("echo_ray.decode.engine", "echo_ray.decode.slots", "echo_ray.serve."))]
    assert [m for m in engine if "echo_ray.decode.blockwise" in g[m]] == []
    for path, tree in _modules().items():  # from blockwise only the decoder itself
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "echo_ray.decode.blockwise":
                assert {a.name for a in node.names} <= {"BlockDecoder", "CACHE_MODES"}, path


def test_stage_job_does_not_import_transformers():
    """Unpickling a StageJob (Ray Train's controller does, for every stage) must stay cheap: the
    stage modules, and with them transformers and the model code, load only in the workers."""
    code = "import sys, echo_ray.train.job; print(sorted(m for m in sys.modules if m.split('.')[0] == 'transformers'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "[]", out.stdout[:500]


def test_split_types_and_phantom_ground_truth_sit_below_their_users():
    g = _graph()
    assert "echo_ray.eval.dataset" not in g["echo_ray.eval.testset_json"]
    assert g["echo_ray.eval.split"] == set()
    assert "echo_ray.data.phantom" not in g["echo_ray.data.phantom_text"]
    assert g["echo_ray.data.phantom_study"] == set()


if __name__ == "__main__":
    package = Path(sys.argv[1]).resolve() / "echo_ray" if len(sys.argv) > 1 else PACKAGE
    report: dict[str, object] = {"root": str(package.parent)}
    for label, top in (("all_imports", False), ("module_level", True)):
        graph = _graph(package, top)
        report[label] = {"modules": len(graph), "edges": sum(map(len, graph.values())), "cycles": _cycles(graph)}
    print(json.dumps(report))

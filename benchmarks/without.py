"""Run a Python script or module as if some top-level packages were not installed.

Rehearses a machine image that lacks them (the lent GPU machines have torch + transformers + this
repo, no Ray, no DeepSpeed) on a machine that has them: every finder on `sys.meta_path` is wrapped so
that it reports the hidden packages as absent. `import ray` then raises ModuleNotFoundError and
`importlib.util.find_spec("ray")` returns None, as on an image without Ray (a sys.path shadow
package would still be found by find_spec).

Usage:
    python benchmarks/without.py ray,deepspeed benchmarks/decode.py --json
    python benchmarks/without.py ray,deepspeed -m pytest -q tests/test_engine_gpu.py
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


class HidingFinder:
    """Delegates to one meta-path finder, except for the hidden top-level packages."""

    def __init__(self, inner, hidden: frozenset[str]):
        self.inner, self.hidden = inner, hidden

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.hidden:
            return None
        find = getattr(self.inner, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):  # invalidate_caches, find_distributions, ...
        return getattr(self.inner, attr)


def hide(packages: list[str]) -> None:
    """Make `packages` unimportable in this process (they must not be imported yet)."""
    hidden = frozenset(p for p in packages if p)
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in hidden)
    if loaded:
        raise RuntimeError(f"cannot hide packages that are already imported: {loaded[:3]}")
    sys.meta_path[:] = [HidingFinder(f, hidden) for f in sys.meta_path]


def main(argv: list[str]) -> None:
    if len(argv) < 2:
        sys.exit("usage: without.py PKG[,PKG...] (SCRIPT | -m MODULE) [ARGS...]")
    hide(argv[0].split(","))
    if argv[1] == "-m":
        sys.argv = [argv[2], *argv[3:]]
        runpy.run_module(argv[2], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv[1:]
        sys.path[0] = str(Path(argv[1]).resolve().parent)  # as `python SCRIPT` sets it
        runpy.run_path(argv[1], run_name="__main__")


if __name__ == "__main__":
    main(sys.argv[1:])

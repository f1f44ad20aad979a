"""The accelerator check: what the first lent GPU must run, as one command with one JSON line.

Parts, each a subprocess under its own time limit, all inside one budget (default 470 s, under the
8 minutes the issue allows on one GPU):
  engine_gpu_tests  tests/test_engine_gpu.py under pytest (the engine's CUDA graphs give its eager
                    tokens); without pytest, the same check run directly (tests/engine_graphs_check.py)
  train_torch       one bf16 optimizer step of CPT, RAD and DCD on the tiny preset, plain torch AdamW,
                    DCD on records an in-process teacher decodes (benchmarks/train_step.py)
  train_deepspeed   the same steps on DeepSpeed ZeRO with bf16 weights (needs deepspeed)
  ray_teacher_pool  the DCD teacher as a one-GPU Ray actor == in-process (benchmarks/teacher_actor.py; needs ray)
  decode_7b         benchmarks/decode.py at the 7B shape: AR, multi-step, one-step vanilla and fused at
                    batch 1/16/64 on the engine with and without CUDA graphs and on the reference
                    decoders, in the time left (what does not fit is listed in its `unmeasured`)
Each part is recorded as ran / skipped (with the reason) / failed (with its stderr tail) / timed_out;
the last line of stdout is the JSON of all of them, with `ok` true when none failed (with `--log-dir`
also written there as gpu_check.json, beside each part's log).

`--dry-run` rehearses the same parts on the CPU at a reduced 7B shape (real widths, one layer, a
2,048-word vocabulary, 32-token prompts, batches 1 and 2), so every path except the CUDA-only calls
has run before a device arrives. `--without ray,deepspeed,pytest` runs every part as if those were not
installed (benchmarks/without.py), as on the lent machines' image.

Usage (via benchmarks/gpu_check.sh, which sets the environment):
    bash benchmarks/gpu_check.sh                               # on the GPU machine
    bash benchmarks/gpu_check.sh --dry-run --without ray,deepspeed     # CPU, as on the lent image
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import math
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PARTS = ("engine_gpu_tests", "train_torch", "train_deepspeed", "ray_teacher_pool", "decode_7b")
DECODE_KINDS = "ar,multistep_fused,onestep_vanilla,onestep_fused"
DECODE_GPU = ["--shape", "7b", "--prompt-len", "1024", "--max-new", "256", "--batches", "1,16,64", "--repeats", "1"]
DECODE_DRY = ["--shape", "7b", "--layers", "1", "--vocab", "2048", "--prompt-len", "32", "--max-new", "8",
              "--block-size", "4", "--batches", "1,2", "--repeats", "1", "--no-warmup", "--allow-cpu"]  # fmt: skip
PACKAGES = ("torch", "transformers", "pydantic", "pillow", "pyarrow", "pytest", "ray", "deepspeed")
# Import names every part needs (echo_ray.config is pydantic-validated; the lent image lacks pydantic).
REQUIRED = ("torch", "transformers", "pydantic", "yaml", "PIL", "numpy", "safetensors", "pyarrow")
PART_LIMIT_S = {"engine_gpu_tests": 150, "train_torch": 150, "train_deepspeed": 150, "ray_teacher_pool": 120}
DECODE_RESERVE_S = 90  # model init before the first measurement, and the last measurement's overrun


@dataclass
class Check:
    """The run's settings: which interpreter, which packages count as absent, the budget's clock."""

    python: str
    dry_run: bool
    hidden: frozenset[str]
    budget_s: float
    log_dir: Path
    start: float = field(default_factory=time.perf_counter)

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.start)

    def has(self, package: str) -> bool:
        return package not in self.hidden and importlib.util.find_spec(package) is not None

    def command(self, *args: str) -> list[str]:
        """`python ARGS`, through benchmarks/without.py when packages are hidden."""
        hide = [str(REPO / "benchmarks" / "without.py"), ",".join(sorted(self.hidden))] if self.hidden else []
        return [self.python, *hide, *args]


def run_part(check: Check, name: str, args: list[str], limit_s: float, prints_json: bool = True) -> dict:
    """Run one part's command; its last stdout line is its JSON (`prints_json`). -> the part's record."""
    log = check.log_dir / f"{name}.log"
    t0 = time.perf_counter()
    print(f"[gpu_check] {name}: starting (limit {limit_s:.0f} s)", file=sys.stderr, flush=True)
    try:
        with open(log, "w", encoding="utf-8") as err:
            out = subprocess.PIPE if prints_json else err  # pytest reports on stdout: into the log too
            proc = subprocess.run(check.command(*args), cwd=REPO, stdout=out, stderr=err, text=True, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return {"status": "timed_out", "seconds": time.perf_counter() - t0, "limit_s": limit_s, "log_tail": tail(log)}
    rec: dict = {"seconds": time.perf_counter() - t0, "returncode": proc.returncode}
    lines = proc.stdout.strip().splitlines() if prints_json else []
    rec["result"] = None
    if prints_json and lines:
        try:
            rec["result"] = json.loads(lines[-1])
        except json.JSONDecodeError:
            pass
    rec["status"] = "ran" if proc.returncode == 0 and (rec["result"] is not None or not prints_json) else "failed"
    if rec["status"] == "failed":
        rec["log_tail"] = tail(log)
    print(f"[gpu_check] {name}: {rec['status']} in {rec['seconds']:.0f} s", file=sys.stderr, flush=True)
    return rec


def tail(path: Path, n: int = 15) -> list[str]:
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines() if path.exists() else []
    return [ln[-300:] for ln in lines[-n:]]


def engine_tests(check: Check, limit_s: float) -> dict:
    """pytest on tests/test_engine_gpu.py (junit XML read back); without pytest, the check run directly."""
    if not check.has("pytest"):
        args = ["tests/engine_graphs_check.py", *(["--modes", "1"] if check.dry_run else [])]
        rec = run_part(check, "engine_gpu_tests", args, limit_s)
        rec["note"] = "pytest is not installed: ran tests/engine_graphs_check.py (the test's body) directly"
        return rec
    xml = check.log_dir / "engine_gpu_tests.xml"
    args = ["-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_engine_gpu.py", f"--junitxml={xml}"]
    rec = run_part(check, "engine_gpu_tests", args, limit_s, prints_json=False)
    if xml.exists():
        suite = ET.parse(xml).getroot()
        suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
        counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
        skips = [s.get("message", "") for s in suite.iter("skipped")]
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        rec["result"] = {**counts, "passed": passed, "skip_reasons": skips}
    return rec


def decode_args(check: Check) -> list[str]:
    shape = DECODE_DRY if check.dry_run else DECODE_GPU
    budget = max(0.0, check.left() - DECODE_RESERVE_S)
    return ["benchmarks/decode.py", *shape, "--kinds", DECODE_KINDS, "--graphs", "on,off", "--mixed", "",
            "--no-identity", "--budget-s", f"{budget:.0f}", "--json"]  # fmt: skip


def run_parts(check: Check, parts: list[str]) -> dict[str, dict]:
    needs = {"train_deepspeed": "deepspeed", "ray_teacher_pool": "ray"}
    why = {"deepspeed": "deepspeed is not installed (the `train` extra): DeepSpeedEngine is not exercised here; "
                        "train_torch runs the same stages and losses on plain torch",
           "ray": "ray is not installed: the teacher pool (and Ray Train) are not exercised here; "
                  "train_torch drives the same TeacherWorker and stages in one process"}  # fmt: skip
    out: dict[str, dict] = {}
    for name in parts:
        pkg = needs.get(name)
        if pkg and not check.has(pkg):
            out[name] = {"status": "skipped", "reason": why[pkg]}
            continue
        limit = check.left() - 5 if name == "decode_7b" else min(PART_LIMIT_S[name], check.left() - 5)
        if limit < 20:
            out[name] = {"status": "skipped", "reason": f"the budget of {check.budget_s:.0f} s is spent"}
            continue
        if name == "engine_gpu_tests":
            out[name] = engine_tests(check, limit)
        elif name == "train_torch":
            out[name] = run_part(check, name, ["benchmarks/train_step.py", "--backend", "torch"], limit)
        elif name == "train_deepspeed":
            out[name] = run_part(check, name, ["benchmarks/train_step.py", "--backend", "deepspeed"], limit)
        elif name == "ray_teacher_pool":
            out[name] = run_part(check, name, ["benchmarks/teacher_actor.py"], limit)
        else:
            out[name] = run_part(check, name, decode_args(check), limit)
    return out


def environment(check: Check) -> dict:
    """Versions of the packages the parts use (None: absent or hidden) and the device."""
    import torch

    versions = {}
    for p in PACKAGES:
        try:
            versions[p] = None if p in check.hidden else importlib.metadata.version(p)
        except importlib.metadata.PackageNotFoundError:
            versions[p] = None
    cuda = torch.cuda.is_available()
    return {"python": sys.version.split()[0], "packages": versions, "hidden": sorted(check.hidden),
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "cuda": torch.version.cuda if cuda else None}  # fmt: skip


def preflight(check: Check, env: dict) -> str:
    """Why no part can run here ('' when they can): a missing required package or no CUDA device."""
    missing = [m for m in REQUIRED if not check.has(m)]
    if missing:
        return (f"cannot import {missing}: on the lent machines fetch their wheels here first "
                "(bash benchmarks/gpu_check.sh --wheels) and carry .whl")  # fmt: skip
    if not check.dry_run and env["device"] == "cpu":
        return "no CUDA device visible (use --dry-run for the CPU rehearsal)"
    return ""


def finite(value) -> bool:
    """Every number in a JSON value is finite (NaN or inf from a part is a defect, not a figure)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite(v) for v in value.values())
    if isinstance(value, list):
        return all(finite(v) for v in value)
    return True


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry-run", action="store_true", help="CPU rehearsal at a reduced 7B shape")
    ap.add_argument("--without", default="", help="packages to treat as not installed, e.g. ray,deepspeed,pytest")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--budget-s", type=float, default=470, help="wall-clock budget for all parts")
    ap.add_argument("--log-dir", default="", help="keep each part's stderr here (default: a temporary folder)")
    args = ap.parse_args()
    parts = args.parts.split(",")
    if unknown := sorted(set(parts) - set(PARTS)):
        ap.error(f"unknown part(s) {unknown}; expected a subset of {list(PARTS)}")
    hidden = frozenset(p for p in args.without.split(",") if p)
    with tempfile.TemporaryDirectory(prefix="echo_gpu_check_") as tmp:
        log_dir = Path(args.log_dir or tmp)
        log_dir.mkdir(parents=True, exist_ok=True)
        check = Check(sys.executable, args.dry_run, hidden, args.budget_s, log_dir)
        env = environment(check)
        error = preflight(check, env)
        if error:
            print(json.dumps({"ok": False, "error": error, "environment": env}))
            return 1
        results = run_parts(check, parts)
    numbers_ok = finite(results)
    ok = numbers_ok and all(r["status"] in ("ran", "skipped") and (r.get("result") or {}).get("ok", True)
                            for r in results.values())  # fmt: skip
    out = {"ok": ok, "dry_run": args.dry_run, "seconds": time.perf_counter() - check.start, "budget_s": args.budget_s,
           "numbers_finite": numbers_ok, "environment": env, "parts": results}  # fmt: skip
    if args.log_dir:  # the line can outgrow a captured output tail: the same JSON as a file beside the logs
        (Path(args.log_dir) / "gpu_check.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

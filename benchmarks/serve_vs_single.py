"""Benchmark: this split service against the single-deployment service before it, side by side.

The issue-29 comparison: the mixed workload (onestep, per-request budgets 16-160 tokens, one
phantom PNG, multipart to /v1/reports) at one concurrency, through this checkout's two deployments
and through a checkout of the last single-deployment commit (efdc29c), alternating builds for
`--rounds` rounds so machine drift hits both. Each cell is a fresh local Ray (4 logical CPUs) and
Serve, one ingress / one engine replica of 1 CPU each (the old build: one replica of 1 CPU), a
warm-up, then `--seconds` of load with the same client code (serve_clients.load_cell) for both.
Besides rps and latency, each cell reports the machine's busy CPU per request and each Serve
process's CPU per request.

The old build runs from a worktree made first:
    git worktree add /tmp/single efdc29c
    python benchmarks/serve_vs_single.py --single-tree /tmp/single --rounds 2 --seconds 30
Last stdout line: {"concurrency": 32, "cells": [{"build": "single"|"split", "rps", "p50_ms", "p99_ms",
                   "machine_cpu_ms_per_req", "proc_cpu_ms_per_req"}, ...], "split_vs_single_rps": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BUDGETS = (16, 160)


def busy_cpu_s() -> float:
    import psutil

    t = psutil.cpu_times()
    return t.user + t.system + getattr(t, "nice", 0.0) + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)


def serve_cpu_s() -> dict[str, float]:
    """CPU seconds of the Serve processes on this machine, by role."""
    import psutil

    out: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        for role in ("ReportEngine", "ReportService", "ProxyActor"):
            if role in cmd:
                try:
                    t = p.cpu_times()
                except psutil.Error:
                    continue
                out[role] = out.get(role, 0.0) + t.user + t.system
    return out


def bench_module(build: str, single_tree: Path | None):
    """benchmarks/serve_load.py of the build under test (its make_inputs and, for the old build, deploy)."""
    import importlib.util

    path = (single_tree / "benchmarks" if build == "single" else HERE) / "serve_load.py"
    spec = importlib.util.spec_from_file_location(f"serve_load_{build}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def deploy(build: str, bench, ckpt: str, base_url: str) -> str:
    """The app at /mixed; returns its /v1/reports URL (the old build's own deploy helper for it)."""
    from ray import serve

    if build == "single":
        args = argparse.Namespace(max_new_tokens=64, slots=16, mixed_max=BUDGETS[1], base=base_url)
        return bench.deploy("mixed", ckpt, args, "continuous")
    from echo_ray.serve.app import compose, parse_app_args

    configs = parse_app_args({"model": ckpt, "max_queue": 64, "max_new_tokens_limit": 512,
                              "decode": {"max_new_tokens": 64, "slots": {"max_rows": 16}}})  # fmt: skip
    one = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1, "num_gpus": 0}}
    serve.run(compose(*configs, engine=one, ingress=one), name="mixed", route_prefix="/mixed")
    return base_url + "/mixed/v1/reports"


def cell(build: str, single_tree: Path | None, concurrency: int, seconds: float) -> dict:
    """One build's cell in this (child) process."""
    import socket

    import ray
    from ray import serve
    from serve_clients import load_cell

    if build == "split":
        from echo_ray.serve.app import PROXY_ENV

        os.environ.update(PROXY_ENV)  # as `echo-ray serve` starts Ray
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    bench = bench_module(build, single_tree)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt, png = bench.make_inputs(Path(tmp), None)
        url = deploy(build, bench, ckpt, f"http://127.0.0.1:{port}")
        load_cell(url, png, "onestep", 2, 4, 30, BUDGETS)
        load_cell(url, png, "onestep", concurrency, 2 * concurrency, 30, BUDGETS)  # at load once before counting
        busy0, procs0 = busy_cpu_s(), serve_cpu_s()
        out = load_cell(url, png, "onestep", concurrency, 10**6, seconds, BUDGETS)
        busy1, procs1 = busy_cpu_s(), serve_cpu_s()
    serve.shutdown()
    ray.shutdown()
    n = max(1, out["n"])
    out["machine_cpu_ms_per_req"] = round(1000 * (busy1 - busy0) / n, 2)
    out["proc_cpu_ms_per_req"] = {k: round(1000 * (v - procs0.get(k, 0.0)) / n, 2) for k, v in procs1.items()}
    return {"build": build, **out}


def run_child(build: str, single_tree: Path, args: argparse.Namespace) -> dict:
    """A cell in a fresh interpreter: the old build imports echo_ray from its worktree (and runs there,
    since Ray puts the driver's directory on its workers' path)."""
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0", HF_HUB_OFFLINE="1")
    cwd = str(single_tree if build == "single" else HERE.parent)
    if build == "single":
        env["PYTHONPATH"] = str(single_tree)  # its echo_ray before the installed one
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", build, "--concurrency", str(args.concurrency),
           "--seconds", str(args.seconds), "--single-tree", str(single_tree)]  # fmt: skip
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"{build} cell failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--single-tree", type=Path, help="a worktree of the single-deployment commit (efdc29c)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--child", choices=("single", "split"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(cell(args.child, args.single_tree, args.concurrency, args.seconds)))
        return 0
    if args.single_tree is None or not (args.single_tree / "echo_ray" / "serve" / "service.py").is_file():
        ap.error("--single-tree must be a checkout of the single-deployment commit (git worktree add DIR efdc29c)")
    cells = []
    for _ in range(args.rounds):
        for build in ("single", "split"):
            cells.append(run_child(build, args.single_tree.resolve(), args))
            print(json.dumps(cells[-1]), file=sys.stderr, flush=True)
    rps = {b: statistics.median(c["rps"] for c in cells if c["build"] == b) for b in ("single", "split")}
    print(json.dumps({"concurrency": args.concurrency, "cells": cells,
                      "split_vs_single_rps": round(rps["split"] / max(rps["single"], 1e-9), 3)}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

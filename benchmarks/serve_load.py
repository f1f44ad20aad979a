"""Benchmark: the Ray Serve report service (ingress + engine deployments) under load, on loopback, local Ray.

Part 0, the ceiling: both modes decoded by the engine alone in the benchmark process (batch 8, no
HTTP), so `onestep_vs_ar_rps` can be read against what the decoder itself gives at that batch.
Part 1, throughput: one ingress (1 CPU) and one engine replica (1 CPU, `--slots` rows) serve
`onestep` and `ar` requests from 1, 8 and 32 concurrent clients (threads posting one phantom PNG
each, multipart, like the web page): requests/s, p50 and p99 latency (client side).
Part 1b, mixed workload: every request draws its own `max_new_tokens` from --mixed-min..--mixed-max
(seeded), onestep, so rows end at different blocks: `mixed.<c>` on /v1/reports and `openai.<c>`
(rps, time to first chunk) streaming the same load through /v1/chat/completions (and `native_stream`,
the same through /v1/reports/stream at the top concurrency: streaming's own cost). At the highest
concurrency: `engine_cpu_ms_per_request` (the engine replica's process CPU outside its model calls,
admit + step, per request served; goal <= 3 ms) and `ingress_cpu_ms_per_request`.
Part 2, autoscaling: an app whose engine autoscales (1-3 replicas of 0.5 CPU, target 2 ongoing
requests, 1 s upscale and 4 s downscale delays) gets a burst of 16 concurrent `ar` clients, then
none; RUNNING/STARTING engine replicas are sampled from `serve.status()` throughout.
Part 3, fault: two engine replicas under 8 plain + 8 streaming clients; one is killed (`ray.kill`)
a third into the run: `fault.{sent, completed, failed_plain, streams_unterminated, recovery_s}`
(goals 0 and 0; recovery = seconds until two engine replicas run again).
`--soak` runs only a soak instead: c=8 mixed for --soak-seconds (600), errors and each replica's RSS
after minute 2 and at the end (goal: growth < 10 %).

Bounded: a request count and a time cap per cell (the mixed cells: the time cap only). The model
is the random tiny preset (never emits EOS, so every request decodes its whole budget), unless
`--model` names a checkpoint.

Usage:
    python benchmarks/serve_load.py --json [--model DIR] [--max-new-tokens 64] [--cell-seconds 15] [--slots 16]
    python benchmarks/serve_load.py --json --soak [--soak-seconds 600]
    python benchmarks/serve_load.py --json --cell-seconds 3 --concurrency 1,8 --burst-seconds 20 --fault-seconds 10  # smoke
Last stdout line: {"errors": 0, "onestep": {"1": {"rps", "p50_ms", "p99_ms", "n"}, ...}, "ar": {...},
                   "engine_cpu_ms_per_request": ..., "ingress_cpu_ms_per_request": ...,
                   "mixed": {"1": {"rps", "p50_ms", "p99_ms"}, "8": ..., "32": ...}, "openai": {"1": {"rps", "ttft_ms"}, ...},
                   "openai_vs_native_rps": ..., "fault": {...}, "autoscaling": {...}, ...}
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests
from serve_clients import chat_cell, load_cell

CONCURRENCY = (1, 8, 32)
# Mixed-workload cells run for --cell-seconds, not to a request count: at c=32 a 6 x c cap ended a
# "15 s" cell after ~4 s and ~190 requests, too few for a ratio against another build.
TIMED = 10**6
MODES = ("onestep", "ar")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def make_inputs(work: Path, model: str | None) -> tuple[str, bytes]:
    """(checkpoint path, PNG bytes): the tiny preset and a phantom image unless --model is given."""
    from echo_ray.config import TinyModelConfig
    from echo_ray.data.phantom import read_phantom, tokenizer_corpus, write_phantom
    from echo_ray.model.tiny import build_tiny_checkpoint

    write_phantom(work / "phantom", 1, seed=0)
    png = Path(read_phantom(work / "phantom")[0]["images"][0]["path"]).read_bytes()
    if model:
        return model, png
    ckpt = build_tiny_checkpoint(work / "tiny", TinyModelConfig(), block_size=8, corpus=tokenizer_corpus())
    return str(ckpt), png


def decoder_ceiling(ckpt: str, png: bytes, max_new_tokens: int, batch: int = 8, repeats: int = 3) -> dict:
    """The decoder alone (no HTTP, no Serve), in this process: seconds to decode `batch` reports of
    `max_new_tokens` per mode, one thread like the replica. `onestep_vs_ar` is what batching at
    concurrency `batch` could at most give the service if requests cost nothing else."""
    import io

    import torch
    from PIL import Image

    from echo_ray.config import DecodeConfig, PromptConfig
    from echo_ray.decode.generator import ReportGenerator
    from echo_ray.model.checkpoint import load_checkpoint

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ck = load_checkpoint(ckpt)
        img = Image.open(io.BytesIO(png)).convert("RGB")
        out = {}
        for mode in MODES:
            gen = ReportGenerator(ck, DecodeConfig(mode=mode, max_new_tokens=max_new_tokens), PromptConfig())
            gen.generate([[img]] * batch, "en")  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                gen.generate([[img]] * batch, "en")
                times.append(time.perf_counter() - t0)
            out[f"{mode}_ms_per_report"] = round(1000 * statistics.median(times) / batch, 2)
    finally:
        torch.set_num_threads(threads)
    out["onestep_vs_ar"] = round(out["ar_ms_per_report"] / out["onestep_ms_per_report"], 2)
    return {"batch": batch, **out}


def deploy(name: str, ckpt: str, args: argparse.Namespace, engines: int = 1, auto: dict | None = None,
           slots: int | None = None) -> str:  # fmt: skip
    """Ingress (1 CPU) + `engines` engine replicas (1 CPU each, or autoscaled) at /<name>; returns its base URL."""
    from ray import serve

    from echo_ray.serve.app import compose, parse_app_args

    configs = parse_app_args({
        "model": ckpt, "max_queue": 64 if auto is None else 16, "max_new_tokens_limit": max(512, args.mixed_max),
        "decode": {"max_new_tokens": args.max_new_tokens, "slots": {"max_rows": slots or args.slots}},
    })  # fmt: skip
    engine: dict = {"ray_actor_options": {"num_cpus": args.engine_cpus if auto is None else 0.5, "num_gpus": 0}}
    engine.update({"autoscaling_config": auto} if auto else {"num_replicas": engines})
    ingress = {"num_replicas": 1, "ray_actor_options": {"num_cpus": 1, "num_gpus": 0}}
    serve.run(compose(*configs, engine=engine, ingress=ingress), name=name, route_prefix=f"/{name}")
    return f"{args.base}/{name}"


def throughput(ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 1: both modes at each concurrency on one fixed engine replica."""
    from ray import serve

    base = deploy("load", ckpt, args)
    out: dict = {}
    for mode in MODES:
        load_cell(base + "/v1/reports", png, mode, 2, 4, 30, args.max_new_tokens)  # warm-up, not counted
        out[mode] = {}
        for c in args.concurrency:
            cell = load_cell(base + "/v1/reports", png, mode, c, max(16, 6 * c), args.cell_seconds, args.max_new_tokens)
            out[mode][str(c)] = cell
            log(f"{mode:8s} c={c:<3d} {cell}")
    out["batching"] = requests.get(f"{base}/v1/status", timeout=30).json()["batching"]
    serve.delete("load")
    return out


def mixed(ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 1b: per-request budgets, native route and OpenAI streaming, with each replica's CPU per request."""
    from ray import serve

    base = deploy("mixed", ckpt, args)
    budgets = (args.mixed_min, args.mixed_max)
    load_cell(base + "/v1/reports", png, "onestep", 2, 4, 30, budgets)  # warm-up, not counted
    ingress = replica_pids("mixed", "ReportService")[0]
    out: dict = {"native": {}, "openai": {}}
    for c in args.concurrency:
        before = cpu_marks(base, ingress)
        cell = load_cell(base + "/v1/reports", png, "onestep", c, TIMED, args.cell_seconds, budgets)
        cell.update(cpu_per_request(before, cpu_marks(base, ingress), cell["n"]))
        out["native"][str(c)] = cell
        log(f"mixed native c={c:<3d} {cell}")
    top = args.concurrency[-1]  # the native stream at the top concurrency: streaming's own cost, apart from OpenAI's
    out["native_stream"] = load_cell(base + "/v1/reports/stream", png, "onestep", top, TIMED, args.cell_seconds,
                                     budgets, streaming=True)  # fmt: skip
    log(f"mixed native stream c={top:<3d} {out['native_stream']}")
    for c in args.concurrency:
        cell = chat_cell(base, png, Path(ckpt.rstrip("/")).name, c, TIMED, args.cell_seconds, budgets)
        out["openai"][str(c)] = cell
        log(f"mixed openai stream c={c:<3d} {cell}")
    out["batching"] = requests.get(f"{base}/v1/status", timeout=30).json()["batching"]
    serve.delete("mixed")
    return out


def replica_pids(app: str, deployment: str) -> list[int]:
    """Process ids of an app's replicas of `deployment` (all on this machine: local Ray)."""
    import ray

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    names = sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))
    return [ray.get(ray.get_actor(n, namespace="serve").__ray_call__.remote(lambda self: os.getpid())) for n in names]


def cpu_marks(base: str, ingress_pid: int) -> dict:
    """The engine's counters (/v1/status: process CPU, CPU inside model calls, rows served) and the ingress's CPU."""
    import psutil

    eng = requests.get(f"{base}/v1/status", timeout=30).json()["batching"]
    t = psutil.Process(ingress_pid).cpu_times()
    return {"engine_cpu": eng["process_cpu_s"], "model_cpu": eng["model_cpu_s"], "served": eng["served"],
            "ingress_cpu": t.user + t.system}  # fmt: skip


def cpu_per_request(a: dict, b: dict, n: int) -> dict:
    """CPU ms per request in a cell: the engine's outside model calls (admit + step), and the ingress's."""
    served = max(1, b["served"] - a["served"])
    outside = (b["engine_cpu"] - a["engine_cpu"]) - (b["model_cpu"] - a["model_cpu"])
    return {"engine_cpu_ms_per_request": round(1000 * outside / served, 2),
            "engine_model_cpu_ms_per_request": round(1000 * (b["model_cpu"] - a["model_cpu"]) / served, 2),
            "ingress_cpu_ms_per_request": round(1000 * (b["ingress_cpu"] - a["ingress_cpu"]) / max(1, n), 2)}  # fmt: skip


def replica_count(app_name: str) -> tuple[int, int]:
    """(RUNNING, STARTING) replicas of the app's engine deployment."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0, 0
    states = app.deployments["ReportEngine"].replica_states
    return int(states.get("RUNNING", 0)), int(states.get("STARTING", 0))


def autoscaling(ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 2: a burst of load, then quiet; sample the engine's RUNNING replicas every 0.5 s."""
    from ray import serve

    auto = {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 1, "target_ongoing_requests": 2,
            "upscale_delay_s": 1.0, "downscale_delay_s": 4.0, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}
    # The queue holds the whole burst (16 clients): refusals (429) would count as errors here.
    base = deploy("autoscale", ckpt, args, auto=auto, slots=4)
    timeline: list[tuple[float, int, int]] = []  # (s, running, starting)
    t0 = time.perf_counter()
    result: dict = {}
    stop, scaled_at = threading.Event(), None
    loader = threading.Thread(target=lambda: result.update(load_cell(
        f"{base}/v1/reports", png, "ar", 16, 10_000, args.burst_seconds, args.max_new_tokens, stop)))
    loader.start()
    while loader.is_alive():  # the burst lasts until the new replicas have served for a while (or the cap)
        now = time.perf_counter() - t0
        running, starting = replica_count("autoscale")
        timeline.append((round(now, 1), running, starting))
        if running >= auto["max_replicas"] and scaled_at is None:
            scaled_at = now
        if scaled_at is not None and now - scaled_at > args.hold_seconds:
            stop.set()
        time.sleep(0.5)
    load_end = time.perf_counter() - t0
    deadline = time.perf_counter() + args.settle_seconds
    while time.perf_counter() < deadline:
        running, starting = replica_count("autoscale")
        timeline.append((round(time.perf_counter() - t0, 1), running, starting))
        if running + starting <= auto["min_replicas"] and max(r for _, r, _ in timeline) > auto["min_replicas"]:
            break
        time.sleep(0.5)
    serve.delete("autoscale")
    peak = max(r for _, r, _ in timeline)
    asked = next((t for t, r, s in timeline if r + s > 1), None)
    up = next((t for t, r, _ in timeline if r > 1), None)
    down = next((t for t, r, s in timeline if t > load_end and r + s <= auto["min_replicas"]), None)
    return {"config": auto, "burst_clients": 16, "burst_s": round(load_end, 1), "burst": result,
            "max_replicas_seen": peak, "upscale_requested_s": asked, "first_new_replica_running_s": up,
            "back_to_min_s": down, "final_replicas": timeline[-1][1],
            "timeline_s_running_starting": timeline[::4]}  # fmt: skip


def fault(ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 3: two engine replicas under mixed plain + streaming load; one is killed mid-run."""
    import ray
    from ray import serve

    base = deploy("fault", ckpt, args, engines=2)
    budgets = (args.mixed_min, args.mixed_max)
    cells: dict = {}
    plain = threading.Thread(target=lambda: cells.update(plain=load_cell(
        f"{base}/v1/reports", png, "onestep", 8, 100_000, args.fault_seconds, budgets)))
    streams = threading.Thread(target=lambda: cells.update(stream=load_cell(
        f"{base}/v1/reports/stream", png, "onestep", 8, 100_000, args.fault_seconds, budgets, streaming=True)))
    plain.start(), streams.start()
    time.sleep(args.fault_seconds / 3)
    prefix = "SERVE_REPLICA::fault#ReportEngine#"
    names = lambda: sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))  # noqa: E731
    victim = names()[0]
    t_kill = time.perf_counter()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    recovery = None
    while recovery is None and time.perf_counter() - t_kill < 120:
        now = names()
        if len(now) == 2 and victim not in now and replica_count("fault")[0] == 2:
            recovery = round(time.perf_counter() - t_kill, 2)
        time.sleep(0.25)
    plain.join(), streams.join()
    serve.delete("fault")
    p, s = cells["plain"], cells["stream"]
    counts = s["error_counts"]
    unterminated = counts.get("stream unterminated", 0)
    return {"sent": p["n"] + p["errors"] + s["n"] + s["errors"], "completed": p["n"] + s["n"], "failed_plain": p["errors"],
            "plain_error_kinds": p["error_kinds"], "streams_errored": counts.get("stream ended with error", 0),
            "streams_unterminated": unterminated, "recovery_s": recovery}  # fmt: skip


def soak(ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """--soak: c=8 mixed load for --soak-seconds; every replica's RSS after minute 2 and at the end."""
    import psutil
    from ray import serve

    base = deploy("soak", ckpt, args)
    pids = {d: replica_pids("soak", d)[0] for d in ("ReportService", "ReportEngine")}
    result: dict = {}
    loader = threading.Thread(target=lambda: result.update(load_cell(
        f"{base}/v1/reports", png, "onestep", 8, 10**9, args.soak_seconds, (args.mixed_min, args.mixed_max))))
    loader.start()
    t0, rss_2 = time.perf_counter(), None
    while loader.is_alive():
        if rss_2 is None and time.perf_counter() - t0 >= min(120.0, args.soak_seconds / 5):
            rss_2 = {d: psutil.Process(pid).memory_info().rss for d, pid in pids.items()}
        time.sleep(1.0)
    rss_end = {d: psutil.Process(pid).memory_info().rss for d, pid in pids.items()}
    rss_2 = rss_2 or rss_end
    serve.delete("soak")
    growth = {d: round(100 * (rss_end[d] - rss_2[d]) / rss_2[d], 2) for d in pids}
    return {"seconds": args.soak_seconds, "concurrency": 8, "requests": result["n"], "errors": result["errors"],
            "rss_mb_minute_2": {d: round(v / 1e6, 1) for d, v in rss_2.items()},
            "rss_mb_end": {d: round(v / 1e6, 1) for d, v in rss_end.items()}, "rss_growth_pct": growth}  # fmt: skip


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="end with one JSON line (progress goes to stderr)")
    ap.add_argument("--model", help="checkpoint directory (default: a fresh random tiny preset)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--cell-seconds", type=float, default=15.0, help="time cap per (workload, concurrency)")
    ap.add_argument("--concurrency", default="1,8,32", help="client counts of the load cells (smoke: 1,8)")
    ap.add_argument("--slots", type=int, default=16, help="engine rows (decode.slots.max_rows)")
    ap.add_argument("--engine-cpus", type=float, default=1.0,
                    help="CPUs per fixed engine replica (Ray sets its torch threads from it)")  # fmt: skip
    ap.add_argument("--mixed-min", type=int, default=16, help="mixed workload: smallest per-request budget")
    ap.add_argument("--mixed-max", type=int, default=160, help="mixed workload: largest per-request budget")
    # Replica processes take ~30-40 s to start on a loaded 2-core machine: the burst lasts until all
    # replicas have run for --hold-seconds, capped at --burst-seconds.
    ap.add_argument("--burst-seconds", type=float, default=90.0)
    ap.add_argument("--hold-seconds", type=float, default=8.0)
    ap.add_argument("--settle-seconds", type=float, default=40.0)
    ap.add_argument("--fault-seconds", type=float, default=30.0, help="fault run length (the kill at a third)")
    ap.add_argument("--only-mixed", action="store_true", help="only part 1b (mixed native + OpenAI), for A/B runs")
    ap.add_argument("--soak", action="store_true", help="only the soak: c=8 for --soak-seconds, RSS per replica")
    ap.add_argument("--soak-seconds", type=float, default=600.0)
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    return args


def main() -> int:
    args = parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    t_start = time.perf_counter()
    from echo_ray.serve.app import PROXY_ENV

    os.environ.update(PROXY_ENV)  # the proxy's request path as `echo-ray serve` sets it (replicas get theirs from compose)
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # loopback only
    args.base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="echo_serve_load_") as tmp:
        ckpt, png = make_inputs(Path(tmp), args.model)
        if args.soak:
            result = {"soak": soak(ckpt, png, args)}
            errors = result["soak"]["errors"]
        elif args.only_mixed:
            mix = mixed(ckpt, png, args)
            result = {"mixed": mix["native"], "openai": mix["openai"], "engine_cpus": args.engine_cpus}
            errors = sum(mix[k][c]["errors"] for k in ("native", "openai") for c in mix[k])
        else:
            result, errors = run_all(ckpt, png, args)
    serve.shutdown()
    ray.shutdown()
    result.update(errors=errors, wall_s=round(time.perf_counter() - t_start, 1))
    if not args.json:
        log(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0 if errors == 0 else 1


def run_all(ckpt: str, png: bytes, args: argparse.Namespace) -> tuple[dict, int]:
    ceiling = decoder_ceiling(ckpt, png, args.max_new_tokens)
    log(f"decoder alone, batch 8: {ceiling}")
    tput = throughput(ckpt, png, args)
    mix = mixed(ckpt, png, args)
    scale = autoscaling(ckpt, png, args)
    faults = fault(ckpt, png, args)
    log(f"fault: {faults}")
    cs = list(map(str, args.concurrency))
    errors = sum(tput[m][c]["errors"] for m in MODES for c in cs) + scale["burst"].get("errors", 0)
    errors += sum(mix[k][c]["errors"] for k in ("native", "openai") for c in cs) + mix["native_stream"]["errors"]
    top = cs[-1]
    result = {
        **{m: tput[m] for m in MODES},
        "onestep_vs_ar_rps": round(tput["onestep"][cs[min(1, len(cs) - 1)]]["rps"] / max(tput["ar"][cs[min(1, len(cs) - 1)]]["rps"], 1e-9), 2),
        "decoder_alone_c8": ceiling,
        "engine_cpu_ms_per_request": mix["native"][top]["engine_cpu_ms_per_request"],
        "ingress_cpu_ms_per_request": mix["native"][top]["ingress_cpu_ms_per_request"],
        "cpu_at_concurrency": int(top),
        "mixed": {c: {k: mix["native"][c][k] for k in ("rps", "p50_ms", "p99_ms", "n", "errors")} for c in cs},
        "openai": {c: {k: mix["openai"][c][k] for k in ("rps", "ttft_ms", "p50_ms", "n", "errors")} for c in cs},
        "openai_vs_native_rps": round(mix["openai"][top]["rps"] / max(mix["native"][top]["rps"], 1e-9), 3),
        "native_stream": {k: mix["native_stream"][k] for k in ("rps", "p50_ms", "n", "errors")},
        "openai_vs_native_stream_rps": round(mix["openai"][top]["rps"] / max(mix["native_stream"]["rps"], 1e-9), 3),
        "fault": faults,
        "max_replicas_seen": scale["max_replicas_seen"],
        "batching": mix["batching"],
        "autoscaling": scale,
        "mixed_max_new_tokens": [args.mixed_min, args.mixed_max],
        "slots": args.slots,
        "max_new_tokens": args.max_new_tokens,
    }  # fmt: skip
    return result, errors


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the Ray Serve report service under load, on loopback, with a local Ray.

Part 1, throughput: one replica (1 CPU, continuous batching, `--slots` engine rows) serves `onestep`
and `ar` requests from 1, 8 and 32 concurrent clients (threads posting one phantom PNG each,
multipart, like the web page). Per mode and concurrency: requests/s, p50 and p99 latency
(client-side, arrival to answer). Same replica for both modes, same `max_new_tokens`, so the ratio
is the decoder's (and batching's) effect.
Part 1b, mixed workload: every request draws its own `max_new_tokens` from --mixed-min..--mixed-max
(seeded), onestep, so rows end at different blocks. The same load runs against a replica with
`serve.batching: static` (the old `@serve.batch` path, max_batch_size = --slots) and one with
`continuous` (the block-edge scheduler, decode.slots.max_rows = --slots), side by side.
Part 0, the ceiling: both modes decoded by the engine alone in the benchmark process (batch 8, no
HTTP), so `onestep_vs_ar_rps` can be read against what the decoder itself gives at that batch.
Part 2, autoscaling: a second app with an autoscaling config (1-3 replicas of 0.5 CPU, target 2
ongoing requests, 1 s upscale and 4 s downscale delays) gets a burst of 16 concurrent `ar` clients
(until all replicas have served a few seconds, capped), then none; RUNNING/STARTING replicas are
sampled from `serve.status()` throughout.

Bounded: a request count and a time cap per cell; the whole run takes about 3-4 minutes on 2 cores.
The model is the random tiny preset (never emits EOS, so every request decodes exactly
`--max-new-tokens`), unless `--model` names a checkpoint.

Usage:
    python benchmarks/serve_load.py --json [--model DIR] [--max-new-tokens 64] [--cell-seconds 15] [--slots 16]
Last stdout line: {"errors": 0, "onestep": {"1": {"rps", "p50_ms", "p99_ms", "n"}, "8": ..., "32": ...},
                   "ar": {...}, "onestep_vs_ar_rps": ..., "decoder_alone_c8": {"onestep_vs_ar", ...}, "max_replicas_seen": ..., "autoscaling": {...},
                   "mixed": {"static": {"1": {"rps", "p50_ms", "p99_ms", ...}, "8": ..., "32": ...},
                             "continuous": {...}}, "continuous_vs_static_rps_c32": ...}
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

CONCURRENCY = (1, 8, 32)
MODES = ("onestep", "ar")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


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


def load_cell(url: str, png: bytes, mode: str, concurrency: int, n_requests: int, max_seconds: float,
              max_new_tokens: int | tuple[int, int], stop: threading.Event | None = None) -> dict:  # fmt: skip
    """`concurrency` client threads share `n_requests`; stop issuing after `max_seconds` or on `stop`.

    `max_new_tokens` is one budget for all, or a (low, high) range each request draws from (seeded).
    """
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    t_stop = time.perf_counter() + max_seconds
    rng = random.Random(0)
    budget = (lambda: rng.randint(*max_new_tokens)) if isinstance(max_new_tokens, tuple) else (lambda: max_new_tokens)

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if issued[0] >= n_requests or time.perf_counter() > t_stop or (stop and stop.is_set()):
                    return
                issued[0] += 1
                fields = {"mode": mode, "max_new_tokens": str(budget())}
            t0 = time.perf_counter()
            try:
                r = session.post(url, files=[("images", ("x.png", png, "image/png"))], data=fields, timeout=120)
                ok, why = r.status_code == 200, f"HTTP {r.status_code}"
            except requests.RequestException as e:
                ok, why = False, e.__class__.__name__
            with lock:
                (latencies.append(time.perf_counter() - t0) if ok else errors.append(why))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    wall = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies] or [float("nan")]
    return {"rps": round(len(latencies) / wall, 2), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(percentile(ms, 99), 1), "n": len(latencies), "errors": len(errors),
            "error_kinds": sorted(set(errors))}  # fmt: skip


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


def deploy(name: str, ckpt: str, args: argparse.Namespace, batching: str) -> str:
    """One fixed replica (1 CPU) at /<name>; returns the reports URL."""
    from ray import serve

    from echo_ray.serve.app import max_ongoing_requests, parse_app_args
    from echo_ray.serve.service import ReportService

    cfg, decode, prompt = parse_app_args({
        "model": ckpt, "batching": batching, "max_queue": 64, "max_batch_size": args.slots,
        "batch_wait_timeout_s": 0.01, "max_new_tokens_limit": max(512, args.mixed_max),
        "decode": {"max_new_tokens": args.max_new_tokens, "slots": {"max_rows": args.slots}},
    })  # fmt: skip
    app = ReportService.options(num_replicas=1, ray_actor_options={"num_cpus": 1, "num_gpus": 0},
                                max_ongoing_requests=max_ongoing_requests(cfg, decode)).bind(cfg, decode, prompt)  # fmt: skip
    serve.run(app, name=name, route_prefix=f"/{name}")
    return f"{args.base}/{name}/v1/reports"


def throughput(base: str, ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 1: both modes at each concurrency on one fixed replica (continuous batching)."""
    from ray import serve

    url = deploy("load", ckpt, args, "continuous")
    out: dict = {}
    for mode in MODES:
        load_cell(url, png, mode, 2, 4, 30, args.max_new_tokens)  # warm-up, not counted
        out[mode] = {}
        for c in CONCURRENCY:
            cell = load_cell(url, png, mode, c, max(16, 6 * c), args.cell_seconds, args.max_new_tokens)
            out[mode][str(c)] = cell
            log(f"{mode:8s} c={c:<3d} {cell}")
    out["batching"] = requests.get(f"{base}/load/v1/models", timeout=30).json()["batching"]
    serve.delete("load")
    return out


def mixed(ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 1b: per-request budgets, static (@serve.batch) against continuous batching."""
    from ray import serve

    budgets = (args.mixed_min, args.mixed_max)
    out: dict = {}
    for batching in ("static", "continuous"):
        name = f"mixed_{batching}"
        url = deploy(name, ckpt, args, batching)
        load_cell(url, png, "onestep", 2, 4, 30, budgets)  # warm-up, not counted
        out[batching] = {}
        for c in CONCURRENCY:
            cell = load_cell(url, png, "onestep", c, max(16, 6 * c), args.cell_seconds, budgets)
            out[batching][str(c)] = cell
            log(f"mixed {batching:10s} c={c:<3d} {cell}")
        out[batching]["batching"] = requests.get(url.replace("/v1/reports", "/v1/models"), timeout=30).json()["batching"]
        serve.delete(name)
    return out


def replica_count(app_name: str) -> tuple[int, int]:
    """(RUNNING, STARTING) replicas of the app's deployment."""
    from ray import serve

    app = serve.status().applications.get(app_name)
    if app is None:
        return 0, 0
    states = app.deployments["ReportService"].replica_states
    return int(states.get("RUNNING", 0)), int(states.get("STARTING", 0))


def autoscaling(base: str, ckpt: str, png: bytes, args: argparse.Namespace) -> dict:
    """Part 2: a burst of load, then quiet; sample RUNNING replicas every 0.5 s."""
    from ray import serve

    from echo_ray.serve.app import max_ongoing_requests, parse_app_args
    from echo_ray.serve.service import ReportService

    cfg, decode, prompt = parse_app_args({"model": ckpt, "max_batch_size": 4, "batch_wait_timeout_s": 0.01, "max_queue": 16,
                                          "decode": {"max_new_tokens": args.max_new_tokens, "slots": {"max_rows": 4}}})  # fmt: skip
    auto = {"min_replicas": 1, "max_replicas": 3, "initial_replicas": 1, "target_ongoing_requests": 2,
            "upscale_delay_s": 1.0, "downscale_delay_s": 4.0, "metrics_interval_s": 0.5, "look_back_period_s": 2.0}
    # The queue holds the whole burst (16 clients): refusals (429) would count as errors here.
    app = ReportService.options(autoscaling_config=auto, max_ongoing_requests=max_ongoing_requests(cfg, decode),
                                ray_actor_options={"num_cpus": 0.5, "num_gpus": 0}).bind(cfg, decode, prompt)  # fmt: skip
    serve.run(app, name="autoscale", route_prefix="/autoscale")
    timeline: list[tuple[float, int, int]] = []  # (s, running, starting)
    t0 = time.perf_counter()
    result: dict = {}
    stop, scaled_at = threading.Event(), None
    loader = threading.Thread(target=lambda: result.update(load_cell(
        f"{base}/autoscale/v1/reports", png, "ar", 16, 10_000, args.burst_seconds, args.max_new_tokens, stop)))
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="end with one JSON line (progress goes to stderr)")
    ap.add_argument("--model", help="checkpoint directory (default: a fresh random tiny preset)")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--cell-seconds", type=float, default=15.0, help="time cap per (mode, concurrency)")
    ap.add_argument("--slots", type=int, default=16, help="engine rows (continuous) = max_batch_size (static)")
    ap.add_argument("--mixed-min", type=int, default=16, help="mixed workload: smallest per-request budget")
    ap.add_argument("--mixed-max", type=int, default=160, help="mixed workload: largest per-request budget")
    # Replica processes take ~30-40 s to start on a loaded 2-core machine: the burst lasts until all
    # replicas have run for --hold-seconds, capped at --burst-seconds.
    ap.add_argument("--burst-seconds", type=float, default=90.0)
    ap.add_argument("--hold-seconds", type=float, default=8.0)
    ap.add_argument("--settle-seconds", type=float, default=40.0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    t_start = time.perf_counter()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})  # loopback only
    base = args.base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="echo_serve_load_") as tmp:
        ckpt, png = make_inputs(Path(tmp), args.model)
        ceiling = decoder_ceiling(ckpt, png, args.max_new_tokens)
        log(f"decoder alone, batch 8: {ceiling}")
        tput = throughput(base, ckpt, png, args)
        mix = mixed(ckpt, png, args)
        scale = autoscaling(base, ckpt, png, args)
    serve.shutdown()
    ray.shutdown()
    errors = sum(tput[m][c]["errors"] for m in MODES for c in map(str, CONCURRENCY)) + scale["burst"].get("errors", 0)
    errors += sum(mix[b][str(c)]["errors"] for b in mix for c in CONCURRENCY)
    result = {
        "errors": errors,
        **{m: tput[m] for m in MODES},
        "onestep_vs_ar_rps": round(tput["onestep"]["8"]["rps"] / max(tput["ar"]["8"]["rps"], 1e-9), 2),
        "decoder_alone_c8": ceiling,
        "max_replicas_seen": scale["max_replicas_seen"],
        "batching": tput["batching"],
        "autoscaling": scale,
        "mixed": mix,
        "continuous_vs_static_rps_c32": round(mix["continuous"]["32"]["rps"] / max(mix["static"]["32"]["rps"], 1e-9), 2),
        "mixed_max_new_tokens": [args.mixed_min, args.mixed_max],
        "slots": args.slots,
        "max_new_tokens": args.max_new_tokens,
        "wall_s": round(time.perf_counter() - t_start, 1),
    }
    if not args.json:
        log(json.dumps(result, indent=2))
    print(json.dumps(result))
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Load-generating clients for benchmarks/serve_load.py: threads posting to the report service.

`load_cell` posts multipart reports (plain, or /v1/reports/stream read to its end), `chat_cell`
streams OpenAI chat completions through /v1/chat/completions and measures the time to the first
content chunk. Both: `concurrency` threads share `n_requests`, stop issuing after `max_seconds` (or
on `stop`), each request draws its `max_new_tokens` from a seeded range (or one fixed budget).
Every cell returns rps, p50/p99 latency (client side, arrival to answer), the count and kinds of
errors; streams also count those that ended without their terminal event.

Usage:
    cell = load_cell(url + "/v1/reports", png, "onestep", 8, 48, 15.0, (16, 160))
    chat = chat_cell(url, png, "echo_tiny", 8, 48, 15.0, (16, 160))     # + ttft_ms
"""

from __future__ import annotations

import base64
import json
import random
import statistics
from collections import Counter
import threading
import time

import requests


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 100]) of a non-empty list."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def _run(concurrency: int, n_requests: int, max_seconds: float, one, stop: threading.Event | None) -> tuple[list, list, float]:
    """Threads calling `one(session, i)` -> (ok, latency_s, why, extra) until the budget is used."""
    results: list = []
    errors: list[str] = []
    lock = threading.Lock()
    issued = [0]
    t_stop = time.perf_counter() + max_seconds

    def client() -> None:
        session = requests.Session()
        while True:
            with lock:
                if issued[0] >= n_requests or time.perf_counter() > t_stop or (stop and stop.is_set()):
                    return
                issued[0] += 1
                i = issued[0]
            try:
                ok, latency, why, extra = one(session, i)
            except requests.RequestException as e:
                ok, latency, why, extra = False, 0.0, e.__class__.__name__, None
            with lock:
                (results.append((latency, extra)) if ok else errors.append(why))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results, errors, time.perf_counter() - t0


def _budget(max_new_tokens: int | tuple[int, int]):
    rng = random.Random(0)
    lock = threading.Lock()

    def draw() -> int:
        if isinstance(max_new_tokens, int):
            return max_new_tokens
        with lock:
            return rng.randint(*max_new_tokens)

    return draw


def _summary(results: list, errors: list[str], wall: float) -> dict:
    ms = [r[0] * 1000 for r in results] or [float("nan")]
    return {"rps": round(len(results) / wall, 2), "p50_ms": round(statistics.median(ms), 1),
            "p99_ms": round(percentile(ms, 99), 1), "n": len(results), "errors": len(errors),
            "error_kinds": sorted(set(errors)), "error_counts": dict(Counter(errors))}  # fmt: skip


def load_cell(url: str, png: bytes, mode: str, concurrency: int, n_requests: int, max_seconds: float,
              max_new_tokens: int | tuple[int, int], stop: threading.Event | None = None,
              streaming: bool = False) -> dict:  # fmt: skip
    """Multipart reports to `url` (/v1/reports, or /v1/reports/stream with `streaming`)."""
    draw = _budget(max_new_tokens)

    def one(session: requests.Session, i: int):
        fields = {"mode": mode, "max_new_tokens": str(draw())}
        t0 = time.perf_counter()
        r = session.post(url, files=[("images", ("x.png", png, "image/png"))], data=fields, timeout=120, stream=streaming)
        if r.status_code != 200:
            return False, 0.0, f"HTTP {r.status_code}", None
        if not streaming:
            return True, time.perf_counter() - t0, "", None
        last = ""
        for line in r.iter_lines(decode_unicode=True):
            if line.startswith("event:"):
                last = line[6:].strip()
        if last != "final":
            return False, 0.0, "stream ended with error" if last == "error" else "stream unterminated", None
        return True, time.perf_counter() - t0, "", None

    return _summary(*_run(concurrency, n_requests, max_seconds, one, stop))


def chat_cell(base: str, png: bytes, model: str, concurrency: int, n_requests: int, max_seconds: float,
              max_new_tokens: int | tuple[int, int], stop: threading.Event | None = None) -> dict:  # fmt: skip
    """Streamed OpenAI chat completions (one image as a data URL, include_usage); adds ttft_ms."""
    draw = _budget(max_new_tokens)
    url = f"{base}/v1/chat/completions"
    image = {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}

    def one(session: requests.Session, i: int):
        body = {"model": model, "max_tokens": draw(), "stream": True, "stream_options": {"include_usage": True},
                "messages": [{"role": "user", "content": [image]}]}  # fmt: skip
        t0 = time.perf_counter()
        r = session.post(url, json=body, timeout=120, stream=True)
        if r.status_code != 200:
            return False, 0.0, f"HTTP {r.status_code}", None
        ttft, done = None, False
        for line in r.iter_lines(decode_unicode=True):
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                done = True
                break
            if ttft is None and json.loads(data).get("choices"):
                ttft = time.perf_counter() - t0
            if "error" in json.loads(data):
                return False, 0.0, "stream ended with error", None
        if not done:
            return False, 0.0, "stream unterminated", None
        return True, time.perf_counter() - t0, "", ttft

    results, errors, wall = _run(concurrency, n_requests, max_seconds, one, stop)
    out = _summary(results, errors, wall)
    ttfts = [r[1] * 1000 for r in results if r[1] is not None] or [float("nan")]
    out["ttft_ms"] = round(statistics.median(ttfts), 1)
    return out

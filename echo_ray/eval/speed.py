"""Decoding speed from per-report records: tokens/s, forwards per report, latency percentiles.

Each record describes one generated report: `tokens` (generated tokens, EOS excluded by the
decoder's convention), `forward_passes` (model forwards spent on it; a batched forward counts once
for every row in the batch), `latency_s` (wall seconds from request to finished report). Records
may be mappings or objects with those attributes.

  tokens_per_s        sum(tokens) / wall_s when the caller gives the run's wall time (throughput
                      of a batched run), else sum(tokens) / sum(latency_s) (sequential decoding)
  forwards_per_report mean forward_passes
  tokens_per_forward  sum(tokens) / sum(forward_passes): B for a one-step block decoder without
                      early stop, about 1 for AR (the x axis of the trade-off plot)
  latency_p50_s / latency_p95_s  numpy percentiles (linear interpolation) of latency_s

Usage:
    speed_scores([{"tokens": 64, "forward_passes": 8, "latency_s": 0.21}, ...])
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Optional

import numpy as np

from echo_ray.errors import InputError

FIELDS = ("tokens", "forward_passes", "latency_s")


def _field(record: Any, key: str, index: int) -> float:
    value = record.get(key) if isinstance(record, dict) else getattr(record, key, None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"speed record {index}: '{key}' must be a number, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise InputError(f"speed record {index}: '{key}' must be finite and >= 0, got {value!r}")
    return float(value)


def speed_scores(records: Iterable[Any], wall_s: Optional[float] = None) -> dict[str, float]:
    """Speed summary of per-report decoding records (see module docstring for each key)."""
    rows = [[_field(r, k, i) for k in FIELDS] for i, r in enumerate(records)]
    if not rows:
        raise InputError("no speed records to summarize")
    if wall_s is not None and not (isinstance(wall_s, (int, float)) and wall_s > 0):
        raise InputError(f"wall_s must be a positive number, got {wall_s!r}")
    tokens, forwards, latency = (np.array(col) for col in zip(*rows))
    elapsed = float(wall_s) if wall_s is not None else float(latency.sum())
    return {
        "n": len(rows),
        "tokens": float(tokens.sum()),
        "tokens_per_s": float(tokens.sum() / elapsed) if elapsed > 0 else 0.0,
        "forwards_per_report": float(forwards.mean()),
        "tokens_per_forward": float(tokens.sum() / forwards.sum()) if forwards.sum() > 0 else 0.0,
        "latency_p50_s": float(np.percentile(latency, 50)),
        "latency_p95_s": float(np.percentile(latency, 95)),
    }

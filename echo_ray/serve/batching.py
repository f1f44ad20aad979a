"""Decode one `@serve.batch` worth of requests: one ReportGenerator call per (mode, language, budget).

Ray Serve hands the deployment a list of jobs from different callers. Jobs that share decode
settings go into one batched `ReportGenerator.stream` (per-row EOS is the decoder's); the answers are
handed back in the callers' order. The decode runs block by block so the time limit is enforced
between blocks (a thread cannot be interrupted mid-forward). An `InputError` that only some rows
trigger (prompt + budget over the model context) is isolated by decoding that group row by row.

Usage:
    outcomes = decode_jobs(generator, jobs, timeout_s=60.0)   # list[Outcome], same order as jobs
    stats.record(len(jobs), [o.batch_size for o in outcomes]); stats.as_dict()
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

from PIL import Image

from echo_ray.decode.generator import Generation, GeneratedReport, ReportGenerator
from echo_ray.errors import InputError
from echo_ray.serve.schemas import ApiError


@dataclass
class DecodeJob:
    images: list[Image.Image]
    language: str
    mode: str
    max_new_tokens: int
    deadline: float  # time.monotonic() by which the decode must be done

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.mode, self.language, self.max_new_tokens)


@dataclass
class Outcome:
    report: GeneratedReport | None
    error: ApiError | None
    batch_size: int  # rows decoded in the same ReportGenerator call


def group_jobs(jobs: list[DecodeJob]) -> dict[tuple[str, str, int], list[int]]:
    """Indices of `jobs` per decode key, in arrival order."""
    groups: dict[tuple[str, str, int], list[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault(job.key, []).append(i)
    return groups


def run_with_deadline(run: Generation, deadline: float, timeout_s: float) -> list[GeneratedReport]:
    """Exhaust a Generation, checking the deadline after each block (ApiError 503 when passed)."""
    for _ in run:
        if time.monotonic() > deadline:
            raise ApiError(503, f"decode did not finish within the limit of {timeout_s:g} s; lower max_new_tokens")
    assert run.reports is not None
    return run.reports


def start_generation(gen: ReportGenerator, jobs: list[DecodeJob]) -> Generation:
    """Collate the jobs (same key) into one batched Generation; validation happens here."""
    mode, language, budget = jobs[0].key
    return gen.stream([j.images for j in jobs], language, mode=mode, max_new_tokens=budget)


def _decode_group(gen: ReportGenerator, jobs: list[DecodeJob], timeout_s: float) -> list[Outcome]:
    try:
        run = start_generation(gen, jobs)
    except InputError as e:
        if len(jobs) == 1:
            return [Outcome(None, ApiError(422, str(e)), 1)]
        # Some row is at fault (e.g. a longer prompt); decode each alone so the others still succeed.
        return [o for j in jobs for o in _decode_group(gen, [j], timeout_s)]
    try:
        reports = run_with_deadline(run, min(j.deadline for j in jobs), timeout_s)
    except ApiError as e:
        return [Outcome(None, e, len(jobs)) for _ in jobs]
    return [Outcome(r, None, len(jobs)) for r in reports]


def decode_jobs(gen: ReportGenerator, jobs: list[DecodeJob], timeout_s: float) -> list[Outcome]:
    """Decode every job; the result list lines up with `jobs`."""
    out: list[Outcome | None] = [None] * len(jobs)
    for idx in group_jobs(jobs).values():
        for i, outcome in zip(idx, _decode_group(gen, [jobs[i] for i in idx], timeout_s)):
            out[i] = outcome
    assert all(o is not None for o in out)
    return out  # type: ignore[return-value]


@dataclass
class BatchStats:
    """Observed batch sizes on this replica (requests per @serve.batch call, rows per decoder call)."""

    requests: int = 0
    batches: Counter = field(default_factory=Counter)
    decoder_calls: Counter = field(default_factory=Counter)

    def record(self, n_jobs: int, group_sizes: list[int]) -> None:
        self.requests += n_jobs
        self.batches[n_jobs] += 1
        for size in group_sizes:
            self.decoder_calls[size] += 1

    def as_dict(self) -> dict:
        return {
            "requests": self.requests,
            "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())},
            "decoder_call_sizes": {str(k): v for k, v in sorted(self.decoder_calls.items())},
            "max_batch_size_seen": max(self.batches, default=0),
        }

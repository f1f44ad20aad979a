"""Decode an evaluation split with one planned row's generator, batch by batch, in this process.

Each report becomes a flat record: study_id, text, tokens (generated, EOS excluded),
forward_passes (forwards of its batch; a batched forward counts once per row, as in
echo_ray.eval.speed), latency_s (batch start to the finished report), hit_max_length, complete,
and `batch` / `batch_s` (the batch's id and wall seconds). Summed over distinct batches, `batch_s`
is the decoding time of the run, excluding model loading and image reading, so tokens/s compare
between rows and between the local and the Ray path (echo_ray.eval.parallel), which produces the
same records. Images are read per batch; a study with more than `prompt.max_images` images uses
its first `max_images` (the prompt's limit).

Usage:
    gen = load_generator(row.model, row.decode, row.override_block, prompt_cfg, model_cfg, device="cpu")
    records = decode_studies(gen, split.studies, "en", batch_size=8)
"""

from __future__ import annotations

import time
from typing import Any

from echo_ray.config import DecodeConfig, ModelConfig, PromptConfig
from echo_ray.decode.generator import GeneratedReport, ReportGenerator
from echo_ray.eval.dataset import load_study_images
from echo_ray.eval.split import EvalStudy
from echo_ray.model.checkpoint import load_checkpoint


def load_generator(model: str, decode: DecodeConfig, override_block: bool, prompt_cfg: PromptConfig,
                   model_cfg: ModelConfig, device: str = "auto") -> ReportGenerator:  # fmt: skip
    """Load the checkpoint (local dir or s3://) once, as `model_cfg` says, and wrap it in a
    ReportGenerator with the row's decode settings; `device` as in `resolve_device`."""
    return ReportGenerator(load_checkpoint(model, model_cfg, device), decode, prompt_cfg, override_block=override_block)


def report_record(study_id: str, report: GeneratedReport, batch: str, batch_s: float) -> dict[str, Any]:
    return {
        "study_id": study_id,
        "text": report.text,
        "tokens": len(report.tokens),
        "forward_passes": int(report.forward_passes),
        "latency_s": float(report.latency_s),
        "hit_max_length": bool(report.hit_max_length),
        "complete": bool(report.complete),
        "batch": batch,
        "batch_s": batch_s,
    }


def decode_batch(gen: ReportGenerator, studies: list[EvalStudy], language: str, batch: str) -> list[dict[str, Any]]:
    """Read one batch's images and decode it; one record per study, in order."""
    images = [load_study_images(s, gen.prompt_cfg.max_images) for s in studies]
    t0 = time.perf_counter()
    reports = gen.generate(images, language)
    batch_s = time.perf_counter() - t0
    return [report_record(s.study_id, r, batch, batch_s) for s, r in zip(studies, reports)]


def decode_studies(gen: ReportGenerator, studies: list[EvalStudy], language: str, batch_size: int,
                   label: str = "") -> list[dict[str, Any]]:  # fmt: skip
    """Decode every study in batches of `batch_size` (tqdm progress); records in study order."""
    from tqdm.auto import tqdm

    starts = range(0, len(studies), max(1, batch_size))
    records: list[dict[str, Any]] = []
    for b, start in enumerate(tqdm(starts, desc=f"decode {label}".strip(), unit="batch", leave=False)):
        records.extend(decode_batch(gen, studies[start : start + batch_size], language, f"{label}#{b}"))
    return records


def decode_wall_s(records: list[dict[str, Any]]) -> float:
    """Decoding seconds of a run: the sum of each distinct batch's wall time."""
    return float(sum({r["batch"]: r["batch_s"] for r in records}.values()))

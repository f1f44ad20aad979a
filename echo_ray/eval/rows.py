"""One results-table row from decoded reports and their references: every metric, flat.

Combines the metric modules: linguistic (BLEU-1..4, ROUGE-L, CIDEr, METEOR when `eval.meteor`),
SemScore, clinical micro/macro F1 from the rule labeler, the optional model-based metrics when
their weights are configured, structural stability and speed. The row keeps what a table column
needs (numbers, in a fixed order); the per-finding P/R/F1, skip reasons of optional metrics and
other non-column facts go into a separate details dict (written as details.json).

Row keys, in order: name, mode, block_size, steps, [threshold], n, bleu1..bleu4, rouge_l, cider,
[meteor], semscore, micro_f1, macro_f1, [ratescore, radgraph_f1, chexbert_f1], complete_fraction,
parse_failure_fraction, repeated_ngram_rate, truncated_fraction, empty_fraction, tokens_per_report,
forwards_per_report, tokens_per_forward, tokens_per_s, latency_p50_s, latency_p95_s.

Usage:
    row, details = score_row("ECHO B=8", decode_cfg, records, references, "en", cfg.eval, encoder)
"""

from __future__ import annotations

import logging
from typing import Any

from echo_ray.clinical.encoder import SentenceEncoder
from echo_ray.config import DecodeConfig, EvalConfig
from echo_ray.errors import InputError
from echo_ray.eval.clinical import clinical_scores, optional_scores
from echo_ray.eval.linguistic import linguistic_scores
from echo_ray.eval.semscore import semscore
from echo_ray.eval.speed import speed_scores
from echo_ray.eval.structure import structure_scores

log = logging.getLogger(__name__)

STRUCTURE_KEYS = ("complete_fraction", "parse_failure_fraction", "repeated_ngram_rate", "truncated_fraction",
                  "empty_fraction")  # fmt: skip
SPEED_KEYS = ("forwards_per_report", "tokens_per_forward", "tokens_per_s", "latency_p50_s", "latency_p95_s")


def row_header(name: str, decode: DecodeConfig, n: int) -> dict[str, Any]:
    """The identifying columns of a row: name, mode, block size (None for AR), steps."""
    header: dict[str, Any] = {
        "name": name,
        "mode": decode.mode,
        "block_size": None if decode.mode == "ar" else decode.block_size,
        "steps": decode.steps if decode.mode == "multistep" else (1 if decode.mode == "onestep" else None),
    }
    if decode.mode == "multistep" and decode.threshold is not None:
        header["threshold"] = decode.threshold
    header["n"] = n
    return header


def _optional(texts: list[str], refs: list[str], eval_cfg: EvalConfig, details: dict) -> dict[str, float]:
    found = optional_scores(texts, refs, eval_cfg)
    numbers = {k: float(v) for k, v in found.items() if not isinstance(v, str)}
    skipped = {k: v for k, v in found.items() if isinstance(v, str)}
    if skipped:
        details["optional_skipped"] = skipped
    return numbers


def score_row(
    name: str,
    decode: DecodeConfig,
    records: list[dict[str, Any]],
    references: list[str],
    language: str,
    eval_cfg: EvalConfig,
    encoder: SentenceEncoder,
    wall_s: float | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(table row, details) for decoded `records` (echo_ray.eval.decoding) against `references`."""
    if len(records) != len(references):
        raise InputError(f"{len(records)} decoded reports but {len(references)} references; they must pair up")
    texts = [r["text"] for r in records]
    row = row_header(name, decode, len(records))
    row.update(linguistic_scores(texts, references, language, meteor=eval_cfg.meteor))
    row["semscore"] = semscore(texts, references, encoder)
    clinical = clinical_scores(texts, references)
    row["micro_f1"], row["macro_f1"] = clinical["micro_f1"], clinical["macro_f1"]
    details: dict[str, Any] = {
        "clinical": {k: clinical[k] for k in ("micro_precision", "micro_recall", "per_finding")},
    }
    row.update(_optional(texts, references, eval_cfg, details))
    structure = structure_scores(texts, [r["hit_max_length"] for r in records])
    row.update({k: structure[k] for k in STRUCTURE_KEYS})
    details["too_short_for_ngrams"] = structure["too_short_for_ngrams"]
    speed = speed_scores(records, wall_s=wall_s if wall_s and wall_s > 0 else None)
    row["tokens_per_report"] = speed["tokens"] / len(records)
    row.update({k: speed[k] for k in SPEED_KEYS})
    details["tokens"] = speed["tokens"]
    details["decode_wall_s"] = wall_s
    return row, details

"""Structural stability of generated reports: sections, repetition, truncation, empty outputs.

One-step block decoding without distillation tends to repeat or drop tokens (method.md, "What the
paper claims"); these counts make that visible next to the quality metrics.

  complete_fraction     reports with both sections ("Findings:"/"Impression:" or 所见/结论), via
                        `echo_ray.report.parse_report`
  parse_failure_fraction reports where neither section header is found
  repeated_ngram_rate   mean over reports of (n-grams that repeat an earlier n-gram of the same
                        report) / (all n-grams), n = 4 by default; reports shorter than n are left
                        out of the mean (they cannot repeat) and counted in `too_short_for_ngrams`
  truncated_fraction    reports whose decoding stopped at max_new_tokens (`hit_max_length` flags
                        from the decoder); None when the flags are not given
  empty_fraction        reports with no text, or only section headers

Usage:
    structure_scores(["Findings: ... Impression: ...", ""], hit_max_length=[False, True])
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Optional

from echo_ray.errors import InputError
from echo_ray.eval.linguistic import tokenize
from echo_ray.report import parse_report


def repeated_ngram_rate(text: str, n: int = 4) -> Optional[float]:
    """Fraction of the text's n-grams that repeat an earlier one; None if it has no n-gram."""
    if n < 1:
        raise InputError(f"n-gram order must be >= 1, got {n}")
    tokens = tokenize(text)
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return None
    repeats = sum(c - 1 for c in Counter(grams).values())
    return repeats / len(grams)


def _is_empty(text: str) -> bool:
    parsed = parse_report(text)
    return not (parsed.findings.strip() or parsed.impression.strip())


def structure_scores(
    reports: list[str], hit_max_length: Optional[list[bool]] = None, n: int = 4
) -> dict[str, Any]:
    """Structural stability figures for generated `reports` (see module docstring for each key)."""
    if not reports:
        raise InputError("no reports to score")
    for i, r in enumerate(reports):
        if not isinstance(r, str):
            raise InputError(f"report {i} is {type(r).__name__}, expected str")
    if hit_max_length is not None and len(hit_max_length) != len(reports):
        raise InputError(f"{len(hit_max_length)} hit_max_length flags for {len(reports)} reports")
    total = len(reports)
    parsed = [parse_report(r) for r in reports]
    rates = [repeated_ngram_rate(r, n) for r in reports]
    measured = [x for x in rates if x is not None]
    return {
        "n": total,
        "complete_fraction": sum(p.complete for p in parsed) / total,
        "parse_failure_fraction": sum(not (p.has_findings or p.has_impression) for p in parsed) / total,
        "repeated_ngram_rate": sum(measured) / len(measured) if measured else 0.0,
        "too_short_for_ngrams": total - len(measured),
        "truncated_fraction": None if hit_max_length is None else sum(map(bool, hit_max_length)) / total,
        "empty_fraction": sum(_is_empty(r) for r in reports) / total,
    }

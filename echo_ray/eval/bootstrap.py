"""Bootstrap 95 % intervals over studies for the table's headline figures.

A percentile bootstrap (Efron & Tibshirani 1993, ch. 13): draw `n_boot` resamples of the study
indices with replacement, recompute the statistic on each, and take the 2.5th and 97.5th
percentiles. Statistics are recomputed from per-study parts, so resampling is one array gather:

  micro-F1        from per-study (tp, fp, fn) counts summed over the resample (the pooled F1 of
                  echo_ray.eval.clinical, not a mean of per-study F1s)
  ROUGE-L         the mean of per-study ROUGE-L (pycocoevalcap's corpus ROUGE-L is that mean)
  grounding drop  micro-F1 with own images minus micro-F1 with swapped images, both on the *same*
                  resample of studies (a paired bootstrap: study difficulty cancels)

The resampling is seeded, so a table is reproducible.

Usage:
    counts = finding_counts(pred_sets, gold_sets)             # (n, 3) tp, fp, fn per study
    lo, hi = micro_f1_interval(counts, n_boot=1000, seed=0)
    lo, hi = mean_interval(per_study_rouge)
    lo, hi = drop_interval(own_counts, swapped_counts)
"""

from __future__ import annotations

from typing import Iterable

import numpy as np

from echo_ray.errors import InputError

LEVEL = 0.95


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) study indices drawn with replacement."""
    if n < 1:
        raise InputError("bootstrap needs at least one study")
    if n_boot < 1:
        raise InputError(f"bootstrap resamples must be >= 1, got {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def finding_counts(predicted: Iterable[set[str]], gold: Iterable[set[str]]) -> np.ndarray:
    """Per-study (tp, fp, fn) over positive findings; (n, 3) int array."""
    rows = [(len(p & g), len(p - g), len(g - p)) for p, g in zip(predicted, gold, strict=True)]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def pooled_f1(counts: np.ndarray) -> np.ndarray:
    """Micro-F1 2tp / (2tp + fp + fn) from summed counts (..., 3) -> (...); 0 with no tp (as clinical.py)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    den = 2 * tp + fp + fn
    return np.where(den > 0, 2 * tp / np.maximum(den, 1), 0.0)


def _percentiles(values: np.ndarray) -> tuple[float, float]:
    tail = (1 - LEVEL) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def micro_f1_interval(counts: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of micro-F1; counts (n, 3) per-study tp, fp, fn."""
    idx = resample_indices(len(counts), n_boot, seed)
    return _percentiles(pooled_f1(counts[idx].sum(axis=1)))


def mean_interval(values: Iterable[float], n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of the mean of per-study values (n,)."""
    arr = np.asarray(list(values), dtype=np.float64)
    idx = resample_indices(len(arr), n_boot, seed)
    return _percentiles(arr[idx].mean(axis=1))


def drop_interval(own: np.ndarray, swapped: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % interval of micro-F1(own) - micro-F1(swapped), paired over studies; each (n, 3)."""
    if own.shape != swapped.shape:
        raise InputError(f"own {own.shape} and swapped {swapped.shape} counts must pair up study by study")
    idx = resample_indices(len(own), n_boot, seed)
    return _percentiles(pooled_f1(own[idx].sum(axis=1)) - pooled_f1(swapped[idx].sum(axis=1)))

"""Bootstrap intervals: they contain the point estimate, shrink with more studies, pair the drop."""

from __future__ import annotations

import numpy as np
import pytest

from echo_ray.errors import InputError
from echo_ray.eval.bootstrap import (drop_interval, finding_counts, mean_interval, micro_f1_interval, pooled_f1,
                                     resample_indices)  # fmt: skip
from echo_ray.eval.clinical import finding_prf


def _sets(rng: np.random.Generator, n: int, p: float) -> list[set[str]]:
    names = ("Cardiomegaly", "Edema", "Pneumothorax")
    return [{x for x in names if rng.random() < p} for _ in range(n)]


def test_pooled_f1_matches_clinical_micro_f1() -> None:
    rng = np.random.default_rng(0)
    pred, gold = _sets(rng, 40, 0.4), _sets(rng, 40, 0.4)
    counts = finding_counts(pred, gold)
    assert counts.shape == (40, 3)
    assert pooled_f1(counts.sum(0)) == pytest.approx(finding_prf(pred, gold)["micro_f1"])
    assert pooled_f1(np.zeros(3, dtype=int)) == 0.0


def test_interval_contains_estimate_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for n in (30, 480):
        gold = _sets(rng, n, 0.4)
        pred = [g if rng.random() < 0.7 else set() for g in gold]
        counts = finding_counts(pred, gold)
        lo, hi = micro_f1_interval(counts, n_boot=500, seed=0)
        assert lo <= pooled_f1(counts.sum(0)) <= hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # ~ 1/sqrt(n): 16x the studies, about a quarter of the width


def test_mean_interval_and_determinism() -> None:
    vals = np.linspace(0, 1, 50)
    assert mean_interval(vals, 300, seed=3) == mean_interval(vals, 300, seed=3)
    lo, hi = mean_interval(vals, 300, seed=3)
    assert lo < 0.5 < hi and hi - lo < 0.3
    assert mean_interval([0.4] * 10) == (pytest.approx(0.4), pytest.approx(0.4))


def test_drop_interval_is_paired() -> None:
    """Identical own and swapped reports: the paired drop is exactly 0 in every resample."""
    rng = np.random.default_rng(2)
    gold = _sets(rng, 60, 0.4)
    pred = _sets(rng, 60, 0.4)
    same = finding_counts(pred, gold)
    assert drop_interval(same, same.copy(), 200) == (0.0, 0.0)
    perfect = finding_counts(gold, gold)
    lo, hi = drop_interval(perfect, same, 200)
    assert 0 < lo <= hi <= 1
    with pytest.raises(InputError, match="pair up"):
        drop_interval(perfect, same[:-1])


def test_bad_sizes() -> None:
    with pytest.raises(InputError, match="at least one study"):
        resample_indices(0, 10, 0)
    with pytest.raises(InputError, match="resamples"):
        resample_indices(5, 0, 0)

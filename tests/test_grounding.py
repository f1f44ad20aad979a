"""Grounding columns: the seeded derangement, the swapped split, and the own-vs-swapped figures."""

from __future__ import annotations

import pytest

from echo_ray.errors import InputError
from echo_ray.eval.split import EvalSplit, EvalStudy
from echo_ray.eval.grounding import (GROUNDING_KEYS, derangement, distinct_fraction, grounding_columns, insert_after,
                                     interval_columns, swap_images)  # fmt: skip

CARDIO = "Findings: The heart is enlarged. No pleural effusion. Impression: Cardiomegaly."
EFFUSION = "Findings: Normal heart size. Small right pleural effusion. Impression: Right pleural effusion."
NORMAL = "Findings: The lungs are clear. Normal heart size. Impression: No acute cardiopulmonary process."


@pytest.mark.parametrize("n", [2, 3, 10, 101])
def test_derangement_has_no_fixed_point_and_is_seeded(n: int) -> None:
    perm = derangement(n, seed=5)
    assert sorted(perm) == list(range(n)) and all(p != i for i, p in enumerate(perm))
    assert perm == derangement(n, seed=5)
    if n > 3:
        assert perm != derangement(n, seed=6)


def test_derangement_needs_two_studies() -> None:
    with pytest.raises(InputError, match="at least 2 studies"):
        derangement(1, 0)


def test_swap_images_keeps_references() -> None:
    studies = [EvalStudy(f"s{i}", "phantom", "en", f"ref {i}", (f"img{i}a.png", f"img{i}b.png")) for i in range(5)]
    split = EvalSplit("data", "eval", "en", studies, 5, 5)
    swapped = swap_images(split, seed=0)
    assert swapped.split.references == split.references
    for i, s in enumerate(swapped.split.studies):
        assert s.study_id == f"s{i}" and s.image_paths == studies[swapped.perm[i]].image_paths != studies[i].image_paths
    assert split.studies[0].image_paths == ("img0a.png", "img0b.png")  # the original is untouched


def test_grounded_row_drops_and_prior_row_does_not() -> None:
    refs = [CARDIO, EFFUSION, NORMAL, CARDIO, EFFUSION, NORMAL]
    perm = derangement(len(refs), 0)
    swapped_refs = [refs[j] for j in perm]
    # A model that reads the image: its report follows the images it is shown.
    cols, details = grounding_columns(refs, swapped_refs, refs, perm, n_boot=200)
    assert set(cols) == set(GROUNDING_KEYS)
    assert cols["micro_f1_swapped_images"] < 1.0 and cols["micro_f1_drop_swapped"] > 0.3
    assert cols["micro_f1_drop_swapped_ci95"][0] <= cols["micro_f1_drop_swapped"] <= cols["micro_f1_drop_swapped_ci95"][1]
    assert cols["distinct_report_fraction"] == cols["reference_distinct_fraction"] == 0.5
    assert details["swap_permutation"] == perm and "Cardiomegaly" in details["swapped_per_finding"]
    # A model that writes one report whatever the image: no drop, nothing changes, one distinct report.
    prior = [CARDIO] * len(refs)
    cols, _ = grounding_columns(prior, list(prior), refs, perm, n_boot=200)
    assert cols["micro_f1_drop_swapped"] == 0.0 and cols["micro_f1_drop_swapped_ci95"] == [0.0, 0.0]
    assert cols["reports_changed_by_swap"] == 0.0
    assert cols["distinct_report_fraction"] == pytest.approx(1 / 6)


def test_interval_columns_and_mismatch() -> None:
    refs = [CARDIO, EFFUSION, NORMAL] * 4
    cols = interval_columns(refs, refs, n_boot=100, seed=0)
    assert cols["micro_f1_ci95"] == [pytest.approx(1.0), pytest.approx(1.0)]
    assert 0.9 < cols["rouge_l_ci95"][0] <= cols["rouge_l_ci95"][1] <= 1.0 + 1e-9
    with pytest.raises(InputError, match="pair up"):
        grounding_columns(refs, refs[:-1], refs, list(range(len(refs))))
    with pytest.raises(InputError):
        distinct_fraction([])


def test_insert_after_keeps_order() -> None:
    row = {"name": "x", "macro_f1": 0.1, "tokens": 3}
    assert list(insert_after(row, "macro_f1", {"a": 1, "b": 2})) == ["name", "macro_f1", "a", "b", "tokens"]
    assert list(insert_after(row, "missing", {"a": 1})) == ["name", "macro_f1", "tokens", "a"]

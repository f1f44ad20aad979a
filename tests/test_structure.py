"""Structural stability figures on hand-built reports."""

from __future__ import annotations

import pytest

from echo_ray.errors import InputError
from echo_ray.eval.structure import repeated_ngram_rate, structure_scores


def test_repeated_ngram_rate_counts_repeats_within_a_report():
    # tokens a b c d a b c d -> 5 four-grams: abcd, bcda, cdab, dabc, abcd -> 1 repeat of 5.
    assert repeated_ngram_rate("a b c d a b c d") == pytest.approx(1 / 5)
    assert repeated_ngram_rate("the heart is normal in size") == 0.0
    assert repeated_ngram_rate("too short") is None
    assert repeated_ngram_rate("x x x x x x", n=1) == pytest.approx(5 / 6)


def test_structure_scores():
    reports = [
        "Findings: Heart size normal. Impression: No acute disease.",
        "Findings: no effusion no effusion no effusion no effusion",
        "nothing structured here at all",
        "",
    ]
    s = structure_scores(reports, hit_max_length=[False, True, False, False])
    assert s["n"] == 4
    assert s["complete_fraction"] == 0.25
    assert s["parse_failure_fraction"] == 0.5
    assert s["truncated_fraction"] == 0.25
    assert s["empty_fraction"] == 0.25
    assert s["too_short_for_ngrams"] == 1  # the empty report
    # Report 1 tokenizes to "findings : no effusion no effusion no effusion no effusion": 7 four-grams,
    # of which the last 3 repeat earlier ones; reports 0 and 2 repeat nothing -> mean (0 + 3/7 + 0) / 3.
    assert s["repeated_ngram_rate"] == pytest.approx(1 / 7)


def test_headers_only_is_empty_and_chinese_sections_parse():
    s = structure_scores(["Findings: Impression:", "所见：心影不大。结论：未见异常。"])
    assert s["empty_fraction"] == 0.5 and s["complete_fraction"] == 1.0
    assert s["truncated_fraction"] is None


def test_bad_input():
    with pytest.raises(InputError):
        structure_scores([])
    with pytest.raises(InputError, match="flags"):
        structure_scores(["a"], hit_max_length=[True, False])
    with pytest.raises(InputError, match="report 0"):
        structure_scores([None])  # type: ignore[list-item]

"""Speed summary from hand-made per-report records."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from echo_ray.errors import InputError
from echo_ray.eval.speed import speed_scores


def test_speed_scores_from_dicts():
    records = [
        {"tokens": 64, "forward_passes": 8, "latency_s": 1.0},
        {"tokens": 32, "forward_passes": 4, "latency_s": 3.0},
        {"tokens": 0, "forward_passes": 1, "latency_s": 2.0},
    ]
    s = speed_scores(records)
    assert s["n"] == 3 and s["tokens"] == 96
    assert s["tokens_per_s"] == pytest.approx(96 / 6.0)
    assert s["forwards_per_report"] == pytest.approx(13 / 3)
    assert s["tokens_per_forward"] == pytest.approx(96 / 13)
    assert s["latency_p50_s"] == pytest.approx(2.0)
    assert s["latency_p95_s"] == pytest.approx(2.0 + 0.9 * 1.0)  # linear interpolation between 2 and 3
    assert speed_scores(records, wall_s=2.0)["tokens_per_s"] == pytest.approx(48.0)


@dataclass
class Rec:
    tokens: int
    forward_passes: int
    latency_s: float


def test_speed_scores_from_objects():
    s = speed_scores([Rec(10, 10, 0.5)])
    assert s["tokens_per_forward"] == 1.0 and s["latency_p95_s"] == 0.5


@pytest.mark.parametrize(
    "records, match",
    [
        ([], "no speed records"),
        ([{"tokens": 1, "forward_passes": 1}], "latency_s"),
        ([{"tokens": -1, "forward_passes": 1, "latency_s": 1}], ">= 0"),
        ([{"tokens": "5", "forward_passes": 1, "latency_s": 1}], "'tokens' must be a number"),
    ],
)
def test_bad_records(records, match):
    with pytest.raises(InputError, match=match):
        speed_scores(records)

"""Results table files: Markdown, JSON round trip, readable PNG."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from echo_ray.errors import InputError
from echo_ray.eval.table import to_markdown, write_results

ROWS = [
    {"model": "AR", "semscore": 0.61, "bleu4": 0.12, "tokens_per_forward": 1.0},
    {"model": "ECHO B=4", "semscore": 0.66, "bleu4": 0.13, "tokens_per_forward": 3.8},
    {"model": "ECHO B=8", "semscore": 0.64, "tokens_per_forward": 7.5, "note": "a|b"},
]


def test_write_results_files(tmp_path):
    paths = write_results(ROWS, tmp_path, "ECHO vs AR (toy)")
    assert {p.name for p in paths.values()} == {"table.md", "table.json", "tradeoff.png"}
    data = json.loads(paths["json"].read_text())
    assert data["rows"] == ROWS and data["quality_key"] == "semscore" and data["not_plotted"] == []
    md = paths["markdown"].read_text()
    assert md.startswith("## ECHO vs AR (toy)")
    assert "| model | semscore | bleu4 | tokens_per_forward | note |" in md
    assert "| ECHO B=8 | 0.6400 | - | 7.5000 | a\\|b |" in md
    with Image.open(paths["plot"]) as img:
        img.verify()
    with Image.open(paths["plot"]) as img:
        assert img.format == "PNG" and img.size[0] > 300


def test_second_table_and_unplottable_rows(tmp_path):
    rows = [{"name": "no DCD", "semscore": 0.4, "tokens_per_forward": 8.0},
            {"name": "broken", "semscore": float("nan")}]
    paths = write_results(rows, tmp_path, "Ablation", quality_key="semscore", name="ablation")
    assert paths["plot"].name == "ablation_tradeoff.png" and paths["markdown"].name == "ablation.md"
    data = json.loads(paths["json"].read_text())
    assert data["rows"][1]["semscore"] is None and data["not_plotted"] == ["broken"]
    assert "nan" in paths["markdown"].read_text()


def test_markdown_union_of_columns():
    md = to_markdown([{"a": 1}, {"b": "x"}], "T")
    assert "| a | b |" in md and "| 1 | - |" in md and "| - | x |" in md


def test_bad_rows(tmp_path):
    with pytest.raises(InputError):
        write_results([], tmp_path, "t")
    with pytest.raises(InputError, match="row 0"):
        write_results(["x"], tmp_path, "t")  # type: ignore[list-item]
    with pytest.raises(InputError, match="table name"):
        write_results(ROWS, tmp_path, "t", name="../x")


def test_intervals_and_grounding_panel(tmp_path):
    """Rows with intervals and grounding columns: "[lo, hi]" cells, JSON lists, a two-panel figure."""
    rows = [
        {"name": "AR", "micro_f1": 0.6, "micro_f1_ci95": [0.5, 0.7], "micro_f1_swapped_images": 0.2,
         "micro_f1_drop_swapped": 0.4, "micro_f1_drop_swapped_ci95": [0.3, 0.5], "rouge_l": 0.5,
         "rouge_l_ci95": [0.45, 0.55], "tokens_per_forward": 1.0},
        {"name": "no swap run", "micro_f1": 0.5, "rouge_l": 0.4, "tokens_per_forward": 8.0},
    ]  # fmt: skip
    paths = write_results(rows, tmp_path, "Grounding", quality_key="micro_f1")
    assert "| [0.5000, 0.7000] |" in paths["markdown"].read_text()
    data = json.loads(paths["json"].read_text())
    assert data["rows"][0]["micro_f1_drop_swapped_ci95"] == [0.3, 0.5]
    with Image.open(paths["plot"]) as img:
        assert img.size[0] > img.size[1] * 2  # the second (grounding) panel is there
    plain = write_results(ROWS, tmp_path / "plain", "Plain")
    with Image.open(plain["plot"]) as img:
        assert img.size[0] < img.size[1] * 2

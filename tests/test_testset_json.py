"""The published ECHO test-set JSON as evaluation input (echo_ray.eval.testset_json), end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from echo_ray.cli import main
from echo_ray.errors import InputError
from echo_ray.eval.dataset import load_eval_split


def _sample(sid: str, images: list[str], findings: str = "Heart size normal.", impression: str = "No acute disease."):
    return {"sample_id": sid, "images": images, "ground_truth": {"findings": findings, "impression": impression}}


@pytest.fixture()
def testset(tmp_path) -> Path:
    """jsons/<name>_EN_.json and _ZH_.json with images under ../CXRTest/ (the published folder shape)."""
    img_dir = tmp_path / "CXRTest" / "mimic"
    img_dir.mkdir(parents=True)
    for n in ("a", "b", "c"):
        Image.new("RGB", (112, 112), 60 + 40 * "abc".index(n)).save(img_dir / f"{n}.png")
    jsons = tmp_path / "jsons"
    jsons.mkdir()
    en = [_sample("s1", ["../CXRTest/mimic/a.png", "../CXRTest/mimic/b.png"]), _sample("s2", ["../CXRTest/mimic/c.png"])]
    zh = [_sample("z1", ["../CXRTest/mimic/a.png"], "心影大小正常。", "")]
    (jsons / "mimic_test_EN_for_infer_normalize_demo.json").write_text(json.dumps(en), encoding="utf-8")
    (jsons / "mimic_test_ZH_for_infer_normalize_demo.json").write_text(json.dumps(zh, ensure_ascii=False), encoding="utf-8")
    return jsons


def test_reads_file_and_folder_with_relative_images(testset) -> None:
    split = load_eval_split(str(testset), "eval", "en", max_reports=10)
    assert [s.study_id for s in split.studies] == ["s1", "s2"]
    assert split.studies[0].reference == "Findings: Heart size normal. Impression: No acute disease."
    first = Path(split.studies[0].image_paths[0])
    assert first.is_absolute() and first == (testset.parent / "CXRTest" / "mimic" / "a.png").resolve()
    zh = load_eval_split(str(testset / "mimic_test_ZH_for_infer_normalize_demo.json"), "eval", "zh", 10)
    assert zh.studies[0].study_id == "z1" and zh.studies[0].reference.startswith("所见：心影大小正常。")
    with pytest.raises(InputError, match="is a 'zh' test set but the evaluation language is 'en'"):
        load_eval_split(str(testset / "mimic_test_ZH_for_infer_normalize_demo.json"), "eval", "en", 10)


def test_bad_entries_are_clear_errors(testset) -> None:
    f = testset / "mimic_test_EN_for_infer_normalize_demo.json"
    cases = [
        ([_sample("s9", ["../CXRTest/mimic/absent.png"])], r"sample s9: image not found: \.\./CXRTest/mimic/absent\.png"),
        ([_sample("s8", ["../CXRTest/mimic/a.png"], "", "  ")], "sample s8: empty ground truth"),
        ([_sample("s7", [])], "sample s7: 'images' must be a non-empty list"),
        ([{"images": ["../CXRTest/mimic/a.png"]}], "entry 0: no sample_id"),
        ({"not": "a list"}, "expected a JSON list"),
    ]
    for content, match in cases:
        f.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(InputError, match=match):
            load_eval_split(str(f), "eval", "en", 10)
    f.write_text("[{", encoding="utf-8")
    with pytest.raises(InputError, match="cannot read test set"):
        load_eval_split(str(f), "eval", "en", 10)


def test_eval_command_on_the_json_keeps_sample_ids(tiny_ckpt_dir, testset, tmp_path) -> None:
    out = tmp_path / "out"
    assert main(["eval", "--model", str(tiny_ckpt_dir), "--mode", "onestep", "--name", "echo", "--data", str(testset),
                 "--language", "en", "--max-new-tokens", "8", "--out", str(out)]) == 0  # fmt: skip
    preds = [json.loads(line) for line in (out / "predictions" / "echo.jsonl").read_text().splitlines()]
    assert [p["study_id"] for p in preds] == ["s1", "s2"]
    assert preds[1]["reference"] == "Findings: Heart size normal. Impression: No acute disease."
    assert (out / "table.md").is_file() and (out / "tradeoff.png").is_file()
    assert json.loads((out / "table.json").read_text())

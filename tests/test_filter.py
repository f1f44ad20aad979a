"""Stage 1: quarantine checks (validate.py) and the modality filter (filter.py) on single records."""

from __future__ import annotations

from pathlib import Path

from corpus_fixtures import png

from echo_ray.data.pipeline.filter import exam_is_non_chest, modality_filter
from echo_ray.data.pipeline.prepare import split_records
from echo_ray.data.pipeline.validate import check_record
from echo_ray.data.schema import image, issue_record, new_record


def rec(findings="The lungs are clear.", impression="No acute process.", exam="CHEST PA AND LAT", images=None, **kw):
    return new_record("phantom", "s1", raw_findings=findings, raw_impression=impression,
                      images=images if images is not None else [image("/x.png", "PA")], extras={"exam": exam}, **kw)  # fmt: skip


def exists(path: str) -> bool:
    return path == "/x.png"


def test_quarantine_reasons():
    assert check_record(rec(), True, exists) is None
    assert check_record(issue_record("phantom", "s2", "not_utf8", "bad byte"), True, exists) == ("not_utf8", "bad byte")
    assert check_record(rec(findings="", impression=" ___ "), True, exists)[0] == "empty_sections"
    assert check_record(rec(findings="view1_frontal.jpg"), True, exists)[0] == "wrong_column"
    moved = rec(findings="", impression="", indication="FINDINGS: lungs clear. IMPRESSION: normal.")
    assert check_record(moved, True, exists) == ("wrong_column", "report sections found in the indication column")
    prose = rec(images=[image("The lungs are clear and the heart is normal", "PA")])
    assert check_record(prose, True, exists)[0] == "wrong_column"
    assert check_record(rec(images=[]), True, exists)[0] == "no_images"
    missing = rec(images=[image("/x.png", "PA"), image("/gone.png", "LATERAL")])
    assert check_record(missing, True, exists) == ("missing_image", "image file not found: /gone.png")
    assert check_record(missing, False, exists) is None  # require_images off: absence is allowed


def test_modality_filter():
    assert modality_filter(rec()) is None
    assert modality_filter(rec(exam="KNEE (3 VIEWS)"))[0] == "non_chest"
    assert not exam_is_non_chest("CHEST AND ABDOMEN")  # names the chest: kept
    knee = rec(findings="Mild degenerative change of the knee joint.", impression="", exam="")
    assert modality_filter(knee)[0] == "non_chest"
    empty = rec(findings="See separate report.", impression="Images reviewed.", exam="")
    assert modality_filter(empty)[0] == "no_clinical_content"
    assert modality_filter(rec(findings="", impression="Small right pleural effusion.", exam="")) is None


def test_split_records_accounts_for_everything(tmp_path):
    png(tmp_path / "a.png")
    ok = rec(images=[image(str(tmp_path / "a.png"), "PA")])
    records = [ok, rec(exam="PELVIS AP", images=ok["images"]), rec(findings="", impression="", images=ok["images"]),
               rec(images=[image(str(tmp_path / "missing.png"), "PA")])]  # fmt: skip
    kept, rejected = split_records(records, require_images=True, exists=lambda p: Path(p).is_file())
    assert kept == [ok]
    assert [(r["status"], r["reason"]) for r in rejected] == [
        ("filtered", "non_chest"), ("quarantined", "empty_sections"), ("quarantined", "missing_image")]  # fmt: skip

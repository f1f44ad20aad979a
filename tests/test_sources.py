"""Source adapters on fixture files written in each distributor's layout, and on the real IU tables."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import shared_path
from corpus_fixtures import (
    write_chexpert,
    write_iu_fixture,
    write_mimic,
    write_phantom_by_hand,
    write_rexgradient,
)

from echo_ray.config import SourceSpec
from echo_ray.data.schema import RECORD_SCHEMA, to_table
from echo_ray.data.sources import get_adapter
from echo_ray.data.sources.sections import parse_report_text
from echo_ray.errors import EchoError, InputError


def read_all(name: str, root: Path, **kw) -> dict[str, dict]:
    spec = SourceSpec(name=name, path=str(root), **kw)
    adapter = get_adapter(name)
    records = [r for t in adapter.list_tasks(spec) for r in adapter.read_task(spec, t)]
    to_table(records, RECORD_SCHEMA)  # every record fits the unified schema
    return {r["study_id"]: r for r in records}


def test_sections_follow_mimic_headers():
    s = parse_report_text(
        "FINAL REPORT\n EXAMINATION: CHEST (PA AND LAT)\n INDICATION: cough\n FINDINGS: Lungs clear.\n"
        " Heart normal.\n CONCLUSION: No acute process.\n"
    )
    assert (s.exam, s.indication) == ("CHEST (PA AND LAT)", "cough")
    assert (s.findings, s.impression) == ("Lungs clear. Heart normal.", "No acute process.")
    bare = parse_report_text("Lungs are clear. No effusion.")
    assert bare.findings == "Lungs are clear. No effusion." and bare.impression == ""


def test_mimic_layout(tmp_path):
    recs = read_all("mimic_cxr", write_mimic(tmp_path))
    good = recs["50000001"]
    assert good["uid"] == "mimic_cxr:50000001" and good["extras"]["subject_id"] == "10000001"
    assert good["extras"]["exam"] == "CHEST (PA AND LAT)" and good["extras"]["split"] == "train"
    assert good["raw_findings"].startswith("The lungs are clear.") and good["raw_impression"] == "No acute cardiopulmonary process."
    assert [im["view"] for im in good["images"]] == ["PA", "LATERAL"]
    assert good["images"][0]["path"].endswith("files/p10/p10000001/s50000001/50000001-00.jpg")
    assert Path(good["images"][0]["path"]).is_absolute()
    assert recs["50000003"]["issue"] == "not_utf8" and "0xff" in recs["50000003"]["issue_detail"]
    assert recs["50000004"]["issue"] == "unreadable_file"
    assert recs["50000007"]["raw_findings"] == recs["50000007"]["raw_impression"] == ""
    assert len(recs) == 7


def test_chexpert_plus_layout(tmp_path):
    recs = read_all("chexpert_plus", write_chexpert(tmp_path))
    s1 = recs["patient00001/study1"]
    assert [im["view"] for im in s1["images"]] == ["PA", "LATERAL"]
    assert s1["indication"] == "Cough." and s1["extras"]["patient_id"] == "chexpert_plus:p1"
    assert recs["patient00003/study1"]["raw_findings"] == "view1_frontal.jpg"  # caught later as wrong_column
    malformed = [r for r in recs.values() if r["issue"] == "malformed_row"]
    assert len(malformed) == 1 and "expected 27 fields, got 4" in malformed[0]["issue_detail"]


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_rexgradient_layout(tmp_path, fmt):
    recs = read_all("rexgradient", write_rexgradient(tmp_path, fmt))
    g1 = recs["GRDN0001"]
    assert [im["view"] for im in g1["images"]] == ["PA", "LATERAL"]
    assert g1["images"][1]["path"] == str(tmp_path / "deid_png/GRDN0001/b.png")
    assert g1["raw_impression"] == "No acute cardiopulmonary process." and g1["extras"]["split"] == "train"
    bad = [r for r in recs.values() if r["issue"]]
    assert len(bad) == 1 and "no study id" in bad[0]["issue_detail"]


def test_iu_fixture_flags_bad_rows(tmp_path):
    recs = read_all("iu_xray", write_iu_fixture(tmp_path))
    assert recs["1"]["extras"]["exam"] == "Xray Chest PA and Lateral"
    assert [im["view"] for im in recs["1"]["images"]] == ["FRONTAL", "LATERAL"]
    issues = {sid: r["issue"] for sid, r in recs.items() if r["issue"]}
    assert issues == {"4": "malformed_row", "5": "not_utf8", "7": "malformed_row"}
    assert "indiana_projections.csv" in recs["7"]["issue_detail"]  # a lost view quarantines its study
    assert recs["6"]["images"] == []


def test_iu_real_tables():
    root = shared_path("iu_xray_kaggle")
    recs = read_all("iu_xray", root)
    assert len(recs) == 3851 and not any(r["issue"] for r in recs.values())
    r1 = recs["1"]
    assert r1["raw_impression"] == "Normal chest x-XXXX." and r1["extras"]["mesh"] == "normal"
    assert sum(len(r["images"]) for r in recs.values()) == 7466


def test_phantom_by_hand_and_generator(tmp_path):
    recs = read_all("phantom", write_phantom_by_hand(tmp_path / "hand"))
    assert recs["phantom-000001"]["raw_findings"].startswith("Small left pleural effusion")
    assert recs["phantom-000000"]["extras"]["exam"] == "CHEST (PA AND LAT)"
    assert [r["issue"] for r in recs.values() if r["issue"]] == ["malformed_row"]
    from echo_ray.data.phantom import write_phantom

    write_phantom(tmp_path / "gen", n=5, seed=1)
    gen = read_all("phantom", tmp_path / "gen")
    assert len(gen) == 5 and all(Path(im["path"]).is_file() for r in gen.values() for im in r["images"])
    assert all(r["raw_findings"] or r["raw_impression"] for r in gen.values())


def test_unknown_source_and_missing_paths(tmp_path):
    with pytest.raises(EchoError, match="unknown source 'mimic'"):
        get_adapter("mimic")
    for name in ("mimic_cxr", "chexpert_plus", "rexgradient", "iu_xray", "phantom"):
        with pytest.raises(InputError, match="input path not found"):
            get_adapter(name).list_tasks(SourceSpec(name=name, path=str(tmp_path / "nope")))
    with pytest.raises(InputError, match="missing indiana_projections.csv"):
        (tmp_path / "iu").mkdir()
        (tmp_path / "iu" / "indiana_reports.csv").write_text("uid,findings,impression\n")
        get_adapter("iu_xray").list_tasks(SourceSpec(name="iu_xray", path=str(tmp_path / "iu")))

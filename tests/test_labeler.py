"""Tests for the rule labeler: negation, uncertainty, anatomy statements, aggregation, real IU reports."""

from __future__ import annotations

import csv

import pytest

from conftest import shared_path
from echo_ray.clinical.labeler import (
    NEGATIVE,
    OBSERVATIONS,
    POSITIVE,
    UNCERTAIN,
    Mention,
    extract_mentions,
    has_clinical_content,
    label_report,
)


def test_observations_are_the_14_chexpert_labels():
    assert len(OBSERVATIONS) == 14 and OBSERVATIONS[0] == "No Finding"
    assert "Support Devices" in OBSERVATIONS and "Pleural Other" in OBSERVATIONS


@pytest.mark.parametrize(
    "text, expected",
    [
        ("no pneumothorax", {"Pneumothorax": NEGATIVE}),
        ("pneumothorax", {"Pneumothorax": POSITIVE}),
        ("Small left pleural effusion.", {"Pleural Effusion": POSITIVE}),
        ("No pleural effusion or pneumothorax.", {"Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
        ("Possible consolidation.", {"Consolidation": UNCERTAIN}),
        ("Heart size is normal.", {"Cardiomegaly": NEGATIVE}),
        ("Cardiomegaly.", {"Cardiomegaly": POSITIVE}),
        ("Sternotomy wires.", {"Support Devices": POSITIVE}),
        ("Endotracheal tube in good position.", {"Support Devices": POSITIVE}),
        ("The heart is not enlarged.", {"Cardiomegaly": NEGATIVE}),
        ("The heart is mildly enlarged.", {"Cardiomegaly": POSITIVE}),
        ("Lungs are free of focal consolidation.", {"Consolidation": NEGATIVE}),
        ("Negative for pneumothorax.", {"Pneumothorax": NEGATIVE}),
        ("The previously seen effusion has resolved.", {"Pleural Effusion": NEGATIVE}),
        ("Pneumothorax is not seen.", {"Pneumothorax": NEGATIVE}),
        ("Pneumonia cannot be excluded.", {"Pneumonia": UNCERTAIN}),
        ("Cannot exclude pneumonia.", {"Pneumonia": UNCERTAIN}),
        ("Opacity may represent atelectasis.", {"Lung Opacity": POSITIVE, "Atelectasis": UNCERTAIN}),
        ("No focal opacity to suggest pneumonia.", {"Lung Opacity": NEGATIVE, "Pneumonia": NEGATIVE}),
        ("Cardiomegaly without pulmonary edema.", {"Cardiomegaly": POSITIVE, "Edema": NEGATIVE}),
        ("No pneumothorax, but a small right effusion.", {"Pneumothorax": NEGATIVE, "Pleural Effusion": POSITIVE}),
        ("No consolidation, large effusion, or pneumothorax.",
         {"Consolidation": NEGATIVE, "Pleural Effusion": NEGATIVE, "Pneumothorax": NEGATIVE}),
        ("No change in the small left effusion.", {"Pleural Effusion": POSITIVE}),
        ("Healed left rib fracture.", {"Fracture": POSITIVE}),
        ("No pericardial effusion.", {}),
        ("There are no XXXX of a pleural effusion.", {"Pleural Effusion": NEGATIVE}),
        ("Normal cardiomediastinal silhouette.", {"Enlarged Cardiomediastinum": NEGATIVE}),
        ("Widened mediastinum.", {"Enlarged Cardiomediastinum": POSITIVE}),
    ],
)
def test_status_of_single_statements(text, expected):
    labels = label_report(text)
    labels.pop("No Finding", None)
    assert labels == expected


def test_no_finding_rule_follows_chexpert():
    assert label_report("No pleural effusion or pneumothorax.")["No Finding"] == POSITIVE
    assert label_report("Possible consolidation.")["No Finding"] == NEGATIVE
    # Support Devices does not block No Finding (CheXpert's rule).
    labels = label_report("Endotracheal tube in place. Lungs are clear.")
    assert labels["Support Devices"] == POSITIVE and labels["No Finding"] == POSITIVE
    assert label_report("Normal chest x-XXXX.") == {"No Finding": POSITIVE}


def test_empty_or_contentless_text_gets_no_labels():
    assert label_report("") == {}
    assert label_report("Findings: Impression:") == {}
    assert not has_clinical_content("")
    assert not has_clinical_content("the the the the")


@pytest.mark.parametrize(
    "text", ["The lungs are clear.", "Normal chest.", "No acute cardiopulmonary process.", "Small effusion."]
)
def test_has_clinical_content(text):
    assert has_clinical_content(text)


def test_mentions_carry_phrase_and_sentence():
    mentions = extract_mentions("Heart size normal. Small left pleural effusion. No pneumothorax.")
    assert Mention("Pleural Effusion", POSITIVE, "pleural effusion", "Small left pleural effusion") in mentions
    assert [m.observation for m in mentions] == ["Cardiomegaly", "Pleural Effusion", "Pneumothorax"]
    with pytest.raises(TypeError):
        extract_mentions(None)  # type: ignore[arg-type]


def test_chinese_best_effort():
    labels = label_report("心影增大，双肺未见实变，未见胸腔积液及气胸。")
    assert labels["Cardiomegaly"] == POSITIVE
    assert labels["Consolidation"] == NEGATIVE
    assert labels["Pleural Effusion"] == NEGATIVE and labels["Pneumothorax"] == NEGATIVE


def _iu_reports() -> list[dict[str, str]]:
    with shared_path("iu_xray_kaggle", "indiana_reports.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_real_iu_reports_normal_vs_abnormal():
    rows = _iu_reports()
    by_uid = {r["uid"]: r for r in rows}
    # uid 1 is tagged "normal"; uid 2 "Cardiomegaly/borderline" (read from the shared CSV at test time).
    r1 = by_uid["1"]
    labels = label_report(f"{r1['findings']} {r1['impression']}")
    assert labels["No Finding"] == POSITIVE
    assert labels["Pneumothorax"] == NEGATIVE and labels["Pleural Effusion"] == NEGATIVE
    r2 = by_uid["2"]
    assert label_report(f"{r2['findings']} {r2['impression']}")["Cardiomegaly"] != NEGATIVE


def test_real_iu_reports_agree_with_mesh_tags():
    """On 400 real reports the labeler finds most MeSH-tagged effusions/cardiomegaly, rarely spuriously."""
    rows = [r for r in _iu_reports() if (r["findings"] + r["impression"]).strip()][:400]
    hits = misses = spurious = 0
    for r in rows:
        labels = label_report(f"{r['findings']} {r['impression']}")
        for mesh, obs in (("Pleural Effusion", "Pleural Effusion"), ("Cardiomegaly", "Cardiomegaly")):
            tagged, found = mesh in r["MeSH"], labels.get(obs, NEGATIVE) != NEGATIVE
            hits += tagged and found
            misses += tagged and not found
            spurious += found and not tagged
        assert has_clinical_content(f"{r['findings']} {r['impression']}")
    assert hits >= 4 * misses and hits >= 3 * spurious, (hits, misses, spurious)

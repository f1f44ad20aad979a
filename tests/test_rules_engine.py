"""The rules engine (region enumeration, explicit negatives, terminology) and the shared prompt/schema checks."""

from __future__ import annotations

import json

from conftest import shared_path

from echo_ray.clinical.labeler import label_report
from echo_ray.clinical.regions import REGIONS, REGION_NEGATIVE, missing_regions
from echo_ray.clinical.terminology import sentences
from echo_ray.config import EngineConfig
from echo_ray.engines import make_engine
from echo_ray.engines.base import generate_validated
from echo_ray.engines.prompts import build_prompt, retry_prompt, validate_output
from echo_ray.engines.rules import NO_ACUTE, standardize_one, standardize_text


def positions(text: str, parts: list[str]) -> list[int]:
    return [text.index(p) for p in parts]


def test_every_region_in_fixed_order_with_explicit_negatives():
    out = standardize_text("", "No acute cardiopulmonary process.")
    negs = [REGION_NEGATIVE[r] for r in REGIONS]
    assert out["findings"] == " ".join(negs)  # nothing mentioned: every region's negative, in order
    assert "No pleural effusion or pneumothorax." in out["findings"]
    assert out["impression"] == NO_ACUTE  # a normal study's impression in its one standard wording


def test_positive_regions_keep_sentences_and_state_missing_negatives():
    out = standardize_text("Small L effusion. Heart size normal. ETT in place.", "Small left effusion.")
    f = out["findings"]
    # the positive in its standard wording (clinical/positives.py), then its region's unmentioned key negative
    assert "Small left pleural effusion. No pneumothorax." in f
    assert "No pleural effusion or pneumothorax." not in f
    assert "Endotracheal tube in place." in f and REGION_NEGATIVE["devices"] not in f
    assert "Heart size normal." not in f  # a normal region's own negative wording becomes the standard one
    # beside an effusion the diaphragms' negative does not claim sharp costophrenic angles
    assert "The diaphragms are normal." in f and REGION_NEGATIVE["diaphragms and costophrenic angles"] not in f
    order = positions(f, [REGION_NEGATIVE["thorax"], REGION_NEGATIVE["lung fields"], "Small left pleural effusion.",
                          REGION_NEGATIVE["cardiac silhouette"], REGION_NEGATIVE["hila"], REGION_NEGATIVE["bones"],
                          "Endotracheal tube"])  # fmt: skip
    assert order == sorted(order)
    assert missing_regions(f) == []
    assert label_report(f)["Pleural Effusion"] == 1 and label_report(f)["Pneumothorax"] == 0


def test_one_wording_per_normal_finding_and_specific_negatives_kept_beside_positives():
    # Three ways of saying the same normal study read the same once normalized.
    a = standardize_text("Heart size is normal. The lungs are clear. No pleural effusion or pneumothorax.",
                         "Normal chest radiograph.")  # fmt: skip
    b = standardize_text("Normal heart size. Lungs are clear without focal consolidation.",
                         "No acute cardiopulmonary process.")  # fmt: skip
    c = standardize_text("The cardiac silhouette is within normal limits. There is no pleural effusion or "
                         "pneumothorax.", "")  # fmt: skip
    assert a == b == c == {"findings": " ".join(REGION_NEGATIVE[r] for r in REGIONS), "impression": NO_ACUTE}
    # beside a positive finding of the same region a negative is specific and stays as written
    d = standardize_text("Moderate pulmonary edema. No focal consolidation. Normal heart size.", "Pulmonary edema.")
    assert "Moderate pulmonary edema. No focal consolidation." in d["findings"]
    assert REGION_NEGATIVE["cardiac silhouette"] in d["findings"] and "Normal heart size." not in d["findings"]
    assert d["impression"] == "Pulmonary edema."
    # an impression that is not a normal statement is never replaced
    e = standardize_text("Heart size is normal.", "Interval placement of a catheter.")
    assert e["impression"] == "Interval placement of a catheter."


def test_one_wording_per_simple_positive_finding():
    # Three phantom-style wordings of one effusion: the qualifier the source gives survives, the rest reads alike.
    a = standardize_text("There is a right pleural effusion with blunting of the right costophrenic angle.", "")
    b = standardize_text("Blunting of the right costophrenic angle consistent with a small effusion.", "")
    c = standardize_text("Small right pleural effusion.", "Right pleural effusion.")
    assert "Right pleural effusion. No pneumothorax." in a["findings"]
    assert b["findings"] == c["findings"] != a["findings"]
    assert "Small right pleural effusion. No pneumothorax." in c["findings"]
    # a sentence with more than one finding, a hedge or an unknown word keeps its own wording
    d = standardize_text("Small left effusion, new since the prior study. Possible right apical pneumothorax.", "")
    assert "Small left effusion, new since the prior study." in d["findings"]
    assert "Possible right apical pneumothorax." in d["findings"]
    for out in (a, b, c, d):
        assert missing_regions(out["findings"]) == []


def test_impression_only_findings_are_carried_into_their_region():
    out = standardize_text("", "Right lower lobe pneumonia.")
    assert "Right lower lobe pneumonia." in out["findings"]
    assert REGION_NEGATIVE["lung fields"] not in out["findings"]
    assert "Right lower lobe pneumonia. No pulmonary edema." in out["findings"]  # not "no consolidation"
    derived = standardize_text("Large right pleural effusion.", "")
    assert derived["impression"] == "Large right pleural effusion."


def test_impression_reading_of_a_stated_finding_stays_in_the_impression():
    out = standardize_text("Patchy consolidation in the right lower lobe.",
                           "Right lower lobe consolidation, possibly pneumonia.")  # fmt: skip
    assert out["findings"].count("consolidation") == 1  # not stated twice in two wordings
    assert "possibly pneumonia" not in out["findings"]
    assert out["impression"] == "Right lower lobe consolidation, possibly pneumonia."
    assert "Pneumonia" in label_report(out["findings"] + " " + out["impression"])
    # a finding the findings do not state is still carried
    new = standardize_text("Patchy consolidation in the right lower lobe.", "Small left pleural effusion.")
    assert "Small left pleural effusion." in new["findings"]


def test_terminology_and_cleanup():
    assert sentences("1. NO ACUTE CARDIOPULMONARY PROCESS. 2. Small L effusion w/o PTX") == [
        "No acute cardiopulmonary process.", "Small left effusion without pneumothorax."]  # fmt: skip
    assert sentences("Normal chest x-XXXX. Infiltrate in RLL. Dictated by: ___, MD.") == [
        "Normal chest x-ray.", "Opacity in right lower lobe."]  # fmt: skip


def test_deterministic_and_valid_on_real_iu_reports():
    import csv

    path = shared_path("iu_xray_kaggle", "indiana_reports.csv")
    rows = list(csv.DictReader(path.open(encoding="utf-8")))[:300]
    for r in rows:
        if not (r["findings"] or r["impression"]):
            continue
        a, b = standardize_one(r["findings"], r["impression"]), standardize_one(r["findings"], r["impression"])
        assert a == b and not a.error, (r["uid"], a.error)
        assert missing_regions(a.findings) == []


def test_schema_validation_and_retry_prompt():
    good = json.dumps(standardize_text("Lungs clear.", "Normal."))
    assert validate_output(f"```json\n{good}\n```", "standardize")[1] == ""
    assert validate_output("{findings: x}", "standardize")[1].startswith("invalid JSON")
    assert "exactly the keys" in validate_output('{"findings": "a", "impression": "b", "x": 1}', "standardize")[1]
    assert "hila" in validate_output('{"findings": "Lungs clear.", "impression": "Normal."}', "standardize")[1]
    assert validate_output('{"findings": "Lungs clear.", "impression": "Normal."}', "standardize", False)[1] == ""
    assert "not in Chinese" in validate_output('{"findings": "Lungs clear.", "impression": "Normal."}', "translate")[1]
    assert validate_output('{"findings": "双肺清晰。", "impression": "未见异常。"}', "translate")[1] == ""
    system, user = build_prompt("v1", "standardize", "Lungs clear.", "Normal.", "Cough")
    assert "thorax; mediastinum and trachea; lung fields" in user and "Indication: Cough" in user
    again = retry_prompt("v1", user, "{oops", "invalid JSON: Expecting value at position 1")
    assert again.startswith(user) and "{oops" in again and "It was rejected: invalid JSON" in again


def test_retry_loop_shows_error_then_quarantines():
    seen: list[list[str]] = []

    def scripted_model(prompts):  # scripted answers pin the loop's logic; the tiny-LM test runs a real model
        seen.append([u for _, u in prompts])
        if len(seen) == 1:
            return ["not json", '{"findings": "x", "impression": "y"}']
        return [json.dumps({"findings": "Lungs clear.", "impression": "Normal."})] * len(prompts)

    cfg = EngineConfig(max_retries=2, require_all_regions=False)
    res = generate_validated(scripted_model, [("a", "b", ""), ("c", "d", "")], "standardize", cfg)
    assert [(r.error, r.attempts) for r in res] == [("", 2), ("", 1)]
    assert len(seen[1]) == 1  # only the failed record is asked again
    assert "It was rejected: no JSON object found" in seen[1][0] and "not json" in seen[1][0]
    stubborn = generate_validated(lambda p: ["nope"] * len(p), [("a", "b", "")], "standardize", cfg)
    assert stubborn[0].attempts == 3 and stubborn[0].error.startswith("invalid output after 3 attempt(s)")


def test_engine_registry_errors():
    import pytest

    from echo_ray.errors import ConfigError

    assert make_engine(EngineConfig(kind="rules")).translates is False
    with pytest.raises(ConfigError, match="vllm is not installed|needs normalize.engine.model_path"):
        make_engine(EngineConfig(kind="vllm", model_path="/models/x"))
    with pytest.raises(ConfigError, match="model_path"):
        make_engine(EngineConfig(kind="transformers"))
    with pytest.raises(ConfigError, match="not a directory"):
        make_engine(EngineConfig(kind="transformers", model_path="/no/such/model"))

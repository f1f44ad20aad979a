"""Labeler-based clinical efficacy scores against hand-counted cases, and the optional hooks."""

from __future__ import annotations

import pytest

from echo_ray.config import EvalConfig
from echo_ray.errors import InputError
from echo_ray.eval.clinical import clinical_scores, finding_prf, optional_scores, positive_findings


def test_positive_findings_counts_uncertain_as_positive():
    assert positive_findings("Possible small left pleural effusion. No pneumothorax.") == {"Pleural Effusion"}
    assert positive_findings("No pneumothorax.") == {"No Finding"}


def test_finding_prf_hand_counted():
    pred = [{"Cardiomegaly", "Edema"}, {"Pleural Effusion"}, set()]
    gold = [{"Cardiomegaly"}, {"Pleural Effusion", "Edema"}, {"Edema"}]
    s = finding_prf(pred, gold)
    # Cardiomegaly tp1; Edema tp0 fp1 fn2; Pleural Effusion tp1. Pooled tp2 fp1 fn2.
    assert s["per_finding"]["Cardiomegaly"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1,
                                                "predicted": 1}
    assert s["per_finding"]["Edema"]["f1"] == 0.0 and s["per_finding"]["Edema"]["support"] == 2
    assert s["micro_precision"] == pytest.approx(2 / 3)
    assert s["micro_recall"] == pytest.approx(2 / 4)
    assert s["micro_f1"] == pytest.approx(2 * (2 / 3) * 0.5 / (2 / 3 + 0.5))
    assert s["macro_f1"] == pytest.approx((1.0 + 0.0 + 1.0) / 3)  # only observations that occur
    assert s["per_finding"]["Fracture"]["support"] == 0


def test_clinical_scores_end_to_end():
    refs = ["Small right pleural effusion. Heart size is normal.", "Cardiomegaly. No pneumothorax."]
    preds = ["Small right pleural effusion. The heart is normal in size.", "No pneumothorax. Lungs clear."]
    s = clinical_scores(preds, refs)
    assert s["n"] == 2
    assert s["per_finding"]["Pleural Effusion"]["f1"] == 1.0
    assert s["per_finding"]["Cardiomegaly"]["recall"] == 0.0  # missed in report 2
    assert s["per_finding"]["No Finding"]["predicted"] == 1 and s["per_finding"]["No Finding"]["support"] == 0
    assert s["micro_f1"] == pytest.approx(0.5)  # tp1 fp1 fn1
    assert clinical_scores(refs, refs)["micro_f1"] == 1.0


def test_errors():
    with pytest.raises(InputError, match="pair up"):
        clinical_scores(["a"], [])
    with pytest.raises(InputError, match="unknown observation"):
        finding_prf([{"Flu"}], [set()])


def test_optional_hooks_skip_with_one_line_reasons(tmp_path):
    out = optional_scores(["a"], ["a"], EvalConfig())
    assert set(out) == {"ratescore", "radgraph_f1", "chexbert_f1"}
    assert out["ratescore"] == "skipped: eval.ratescore_weights is not set"
    missing = optional_scores(["a"], ["a"], EvalConfig(radgraph_weights=str(tmp_path / "nope")))
    assert missing["radgraph_f1"].startswith("skipped: eval.radgraph_weights path does not exist")
    # An existing path still needs the package, which this project does not install.
    no_pkg = optional_scores(["a"], ["a"], EvalConfig(chexbert_weights=str(tmp_path)))
    assert no_pkg["chexbert_f1"] == "skipped: package 'f1chexbert' is not installed"
    assert all("\n" not in v for v in {**out, **missing, **no_pkg}.values())

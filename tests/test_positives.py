"""clinical/positives.py: the standard wording of a simple positive finding sentence."""

from __future__ import annotations

import pytest

from echo_ray.clinical.labeler import label_report
from echo_ray.clinical.positives import standard_positive


@pytest.mark.parametrize("sentence, standard", [
    ("The heart is enlarged.", "Cardiomegaly."),
    ("The cardiac silhouette is enlarged.", "Cardiomegaly."),
    ("Moderate cardiomegaly.", "Moderate cardiomegaly."),
    ("There is a right pleural effusion with blunting of the right costophrenic angle.", "Right pleural effusion."),
    ("Blunting of the left costophrenic angle consistent with a small effusion.", "Small left pleural effusion."),
    ("There is a left apical pneumothorax.", "Left apical pneumothorax."),
    ("Right pneumothorax with visible pleural line.", "Right pneumothorax."),
    ("Patchy consolidation in the left lower lobe.", "Patchy left lower lobe consolidation."),
    ("Focal airspace consolidation in the right upper lobe.", "Focal right upper lobe consolidation."),
    ("There is right middle lobe consolidation.", "Right middle lobe consolidation."),
    ("Perihilar haziness consistent with mild interstitial edema.", "Mild perihilar interstitial edema."),
    ("Mildly enlarged heart.", "Mild cardiomegaly."),
    ("The heart is large.", "Cardiomegaly."),
    ("Large right effusion.", "Large right pleural effusion."),
])  # fmt: skip
def test_standard_wording_keeps_every_qualifier(sentence, standard):
    assert standard_positive(sentence) == standard
    assert standard_positive(standard) == standard  # a fixed point: normalizing twice changes nothing
    # the labeler reads the same finding, positive, in both (the sign "haziness" also raised Lung Opacity)
    before = {k: v for k, v in label_report(sentence).items() if k != "Lung Opacity"}
    assert before == label_report(standard)


@pytest.mark.parametrize("sentence", [
    "No pneumothorax.",                                   # a negative
    "Possible small left effusion.",                      # a hedge
    "Left lower lobe consolidation, possibly pneumonia.", # a hedge and a second observation
    "Right pleural effusion and left pneumothorax.",      # two findings
    "Small left effusion, new since the prior study.",    # a comparison (unknown words)
    "Bilateral left pleural effusion.",                   # contradictory sides
    "Small to moderate right pleural effusion.",          # two severities
    "A 2 cm nodule in the right upper lobe.",             # a measurement, a finding it has no wording for
    "Endotracheal tube in place.",                        # a device
    "右侧胸腔积液。",                                      # not English
])  # fmt: skip
def test_anything_else_keeps_its_wording(sentence):
    assert standard_positive(sentence) is None

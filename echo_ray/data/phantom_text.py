"""Raw-style report text for phantom studies (SYNTHETIC; see echo_ray.data.phantom).

Wording varies per study (several phrasings per finding, optional negatives, shuffled order),
and some reports are deliberately messy like real exports: a missing FINDINGS or IMPRESSION
header, anonymization blanks, or a dictation footer. The normalization stage has to cope.
"""

from __future__ import annotations

import numpy as np

from echo_ray.data.phantom_study import PhantomStudy

_EXAMS = ("CHEST (PA AND LAT)", "CHEST (PORTABLE AP)", "CHEST PA AND LATERAL", "Chest, 2 views")
_INDICATIONS = (
    "___-year-old with cough.", "Shortness of breath.", "Fever, evaluate for pneumonia.",
    "Chest pain.", "Preoperative evaluation.", "Follow-up.", "Dyspnea, history of CHF.",
)  # fmt: skip


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _positive_sentences(s: PhantomStudy, rng: np.random.Generator) -> list[tuple[str, str]]:
    """(findings sentence, impression phrase) for every positive finding."""
    out = []
    if s.cardiomegaly:
        out.append((_pick(rng, ("The heart is enlarged.", "Moderate cardiomegaly.",
                                "The cardiac silhouette is enlarged.")), "Cardiomegaly."))  # fmt: skip
    if s.effusion_side:
        side = s.effusion_side
        out.append((_pick(rng, (f"Small {side} pleural effusion.",
                                f"There is a {side} pleural effusion with blunting of the {side} costophrenic angle.",
                                f"Blunting of the {side} costophrenic angle consistent with a small effusion.")),
                    f"{side.capitalize()} pleural effusion."))  # fmt: skip
    if s.pneumothorax_side:
        side = s.pneumothorax_side
        out.append((_pick(rng, (f"There is a {side} apical pneumothorax.",
                                f"{side.capitalize()} pneumothorax with visible pleural line.",
                                f"Small {side} pneumothorax.")), f"{side.capitalize()} pneumothorax."))  # fmt: skip
    if s.consolidation_lobe:
        lobe = s.consolidation_lobe
        out.append((_pick(rng, (f"Patchy consolidation in the {lobe} lobe.",
                                f"Focal airspace consolidation in the {lobe} lobe.",
                                f"There is {lobe} lobe consolidation.")),
                    f"{lobe.capitalize()} lobe consolidation, possibly pneumonia."))  # fmt: skip
    if s.edema:
        out.append((_pick(rng, ("Mild pulmonary edema.", "Perihilar haziness consistent with mild interstitial edema.")),
                    "Mild pulmonary edema."))  # fmt: skip
    names = {"ett": "Endotracheal tube in place.", "line": "Right-sided central venous catheter with tip in the SVC.",
             "pacemaker": "Left chest wall pacemaker with leads in place."}  # fmt: skip
    for d in s.devices:
        out.append((names[d], names[d].split(" in place")[0].split(" with")[0] + " as above."))
    return out


def _negative_sentences(s: PhantomStudy, rng: np.random.Generator) -> list[str]:
    negs = []
    if not s.cardiomegaly:
        negs.append(_pick(rng, ("Heart size is normal.", "The cardiac silhouette is within normal limits.",
                                "Normal heart size.")))  # fmt: skip
    if not s.effusion_side and not s.pneumothorax_side:
        negs.append(_pick(rng, ("No pleural effusion or pneumothorax.", "There is no pleural effusion or pneumothorax.")))
    elif not s.effusion_side:
        negs.append("No pleural effusion.")
    elif not s.pneumothorax_side:
        negs.append("No pneumothorax.")
    if not s.consolidation_lobe and not s.edema:
        negs.append(_pick(rng, ("The lungs are clear.", "No focal consolidation.", "Lungs are clear without focal consolidation.")))
    if rng.random() < 0.5:
        negs.append(_pick(rng, ("The mediastinum is unremarkable.", "Osseous structures are intact.",
                                "No acute osseous abnormality.")))  # fmt: skip
    return [n for n in negs if rng.random() < 0.85]


def write_report_text(s: PhantomStudy, rng: np.random.Generator) -> str:
    """Render one raw report for `s`."""
    pos = _positive_sentences(s, rng)
    sentences = [p[0] for p in pos] + _negative_sentences(s, rng)
    rng.shuffle(sentences)
    findings = " ".join(sentences)
    if pos:
        impression = " ".join(p[1] for p in pos)
    else:
        impression = _pick(rng, ("No acute cardiopulmonary process.", "Normal chest radiograph.",
                                 "No acute cardiopulmonary abnormality."))  # fmt: skip
    head = [f"EXAMINATION: {_pick(rng, _EXAMS)}", f"INDICATION: {_pick(rng, _INDICATIONS)}"]
    if rng.random() < 0.6:
        head.append(_pick(rng, ("COMPARISON: None.", "COMPARISON: ___.", "COMPARISON: Prior study from ___.")))
    style = rng.random()
    if style < 0.07:  # missing FINDINGS header: text runs straight into the impression
        body = [f"IMPRESSION: {findings} {impression}"]
    elif style < 0.12:  # impression missing
        body = [f"FINDINGS: {findings}"]
    else:
        body = [f"FINDINGS: {findings}", "", f"IMPRESSION: {impression}"]
    if rng.random() < 0.1:
        body.append("Dictated by: ___, MD. Electronically signed ___.")
    return "\n".join(head + [""] + body) + "\n"

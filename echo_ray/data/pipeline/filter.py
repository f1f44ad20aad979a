"""Stage 1, modality filter: drop non-chest studies and reports with no usable clinical description.

Decided from extracted clinical entities: the CheXpert-style labeler (echo_ray.clinical.labeler, the
same one evaluation uses) finds observation mentions; chest anatomy words count as chest
evidence too. A study is filtered as
  * non_chest: its exam description names a non-chest body part and no chest part
    ("KNEE 3 VIEWS", "ABDOMEN (SUPINE AND ERECT)"), or its text has no chest entity at all but
    names non-chest anatomy ("Mild degenerative change of the knee joint.");
  * no_clinical_content: the text has no observation and no normal statement the labeler
    recognises ("See separate report.", "Images reviewed.").
Every drop carries its reason and a detail for the manifest.

Usage:
    modality_filter(rec)   # None (keep) or ("non_chest", "exam 'KNEE 3 VIEWS' is not a chest exam")
"""

from __future__ import annotations

import re
from typing import Any, Optional

from echo_ray.clinical.labeler import extract_mentions, has_clinical_content

_CHEST = re.compile(
    r"\b(?:chest|thora\w*|lungs?|pulmonary|cxr|heart|cardiac|cardio\w*|mediastin\w*|pleura\w*|ribs?"
    r"|hila\w*|hemidiaphragm\w*|diaphragm\w*|costophrenic|trachea\w*|pneumo\w*|portable ap|pa and lat\w*)\b",
    re.IGNORECASE,
)
_NON_CHEST = re.compile(
    r"\b(?:abdomen|abdominal|kub|pelvis|pelvic|hips?|knees?|ankles?|feet|foot|hands?|wrists?|elbows?"
    r"|shoulders?|humerus|femur|tibia|fibula|skull|head|brain|sinus(?:es)?|mandible|cervical spine"
    r"|lumbar spine|sacrum|bowel|renal|kidneys?|bladder|uterus|extremity|forearm|leg|ct head|mri)\b",
    re.IGNORECASE,
)

Decision = Optional[tuple[str, str]]


def exam_is_non_chest(exam: str) -> bool:
    """True when an exam description names a non-chest body part and no chest part."""
    return bool(exam.strip()) and bool(_NON_CHEST.search(exam)) and not _CHEST.search(exam)


def modality_filter(rec: dict[str, Any]) -> Decision:
    """None to keep the record, else (reason, detail)."""
    extras = rec.get("extras") or {}
    if not isinstance(extras, dict):
        extras = dict(extras)
    exam = str(extras.get("exam", "") or "")
    if exam_is_non_chest(exam):
        return "non_chest", f"exam {exam.strip()[:80]!r} is not a chest exam"
    text = f"{rec.get('raw_findings') or ''} {rec.get('raw_impression') or ''}".strip()
    mentions = extract_mentions(text)
    if not mentions and not _CHEST.search(text):
        part = _NON_CHEST.search(text)
        if part:
            return "non_chest", f"no chest finding or anatomy; the report describes the {part.group(0).lower()}"
    if not mentions and not has_clinical_content(text):
        return "no_clinical_content", f"no observation or normal statement in {text[:80]!r}"
    return None

"""The standard chest X-ray regions of a normalized report (method.md), in their fixed order.

Each region has a keyword pattern (does a sentence talk about it?), the CheXpert observations
that live in it, and the explicit negative statement used when a report says nothing about it.
Shared by the rules engine (enumeration) and the LLM engines' output validation (coverage).

Usage:
    regions_in("No pleural effusion or pneumothorax.")   # {"pleura"}
    missing_regions(findings_text)                        # regions a normalized text never mentions
"""

from __future__ import annotations

import re

from echo_ray.clinical.labeler import extract_mentions

REGIONS: tuple[str, ...] = (
    "thorax",
    "mediastinum and trachea",
    "lung fields",
    "pleura",
    "cardiac silhouette",
    "hila",
    "diaphragms and costophrenic angles",
    "bones",
    "devices",
)

_I = re.IGNORECASE
REGION_PATTERNS: dict[str, re.Pattern] = {
    "thorax": re.compile(
        r"\bthora(?:x|ces|cic)\b|chest wall|soft tissues?|subcutaneous|lung volumes?|\bvolumes?\b"
        r"|inspirat\w*|hyperinfla\w*|hyperexpan\w*|\bexpanded\b|\binflated\b|body habitus|rotated|rotation"
        r"|upper abdomen|free air|pneumoperitoneum|\bbreast|\baxilla|胸廓|胸壁|软组织", _I),
    "mediastinum and trachea": re.compile(
        r"mediastin\w*|\btrache\w*|\baort\w*|paratracheal|thymus|vena cava|azygos|carina|纵隔|气管|主动脉", _I),
    "lung fields": re.compile(
        r"\blungs?\b|pulmonary|parenchym\w*|opacit\w*|consolidat\w*|atelecta\w*|pneumonia|edema|nodul\w*"
        r"|\bmass(?:es)?\b|infiltrat\w*|airspace|air space|interstitial|emphysema|granulom\w*|scar\w*"
        r"|\blobes?\b|lobar|\bapex\b|apices|apical|bibasilar|basilar|\bbases\b|lucen\w*|vascular\w*|肺", _I),
    "pleura": re.compile(r"pleura\w*|effusions?|pneumothora\w*|hydrothorax|胸膜|胸腔积液|气胸", _I),
    "cardiac silhouette": re.compile(
        r"\bheart\b|cardiac|cardiomegaly|cardiomediastinal|pericardi\w*|心影|心脏", _I),
    "hila": re.compile(r"\bhil(?:a|ar|um|i)\b|肺门", _I),
    "diaphragms and costophrenic angles": re.compile(
        r"diaphragm\w*|hemidiaphragm\w*|costophrenic|\bcp angles?\b|\bsulc(?:i|us)\b|膈|肋膈角", _I),
    "bones": re.compile(
        r"\bbon(?:e|es|y)\b|osseous|skelet\w*|\bribs?\b|\bspine\b|spinal|vertebra\w*|clavic\w*|scapul\w*"
        r"|stern(?:um|al)\b|humer\w*|fractur\w*|degenerative|osteo\w*|spondyl\w*|kyphos\w*|scolios\w*"
        r"|骨|肋骨|脊柱", _I),
    "devices": re.compile(
        r"\btubes?\b|catheters?|\bpicc\b|pacemaker|\bpacer\b|\bleads?\b|\bwires?\b|\bclips?\b|\bstents?\b"
        r"|devices?|\bports?\b|sternotomy|hardware|prosthe\w*|\bdrains?\b|\bicd\b|generator|装置|导管|起搏器|置管", _I),
}

# CheXpert observation -> the region it belongs to.
OBSERVATION_REGION: dict[str, str] = {
    "Enlarged Cardiomediastinum": "mediastinum and trachea",
    "Cardiomegaly": "cardiac silhouette",
    "Lung Opacity": "lung fields",
    "Lung Lesion": "lung fields",
    "Edema": "lung fields",
    "Consolidation": "lung fields",
    "Pneumonia": "lung fields",
    "Atelectasis": "lung fields",
    "Pneumothorax": "pleura",
    "Pleural Effusion": "pleura",
    "Pleural Other": "pleura",
    "Fracture": "bones",
    "Support Devices": "devices",
}

# Stated when the report says nothing about a region.
REGION_NEGATIVE: dict[str, str] = {
    "thorax": "The thorax is symmetric with no chest wall abnormality.",
    "mediastinum and trachea": "The mediastinum is not widened and the trachea is midline.",
    "lung fields": "The lungs are clear without focal consolidation, pulmonary edema or mass.",
    "pleura": "No pleural effusion or pneumothorax.",
    "cardiac silhouette": "The cardiac silhouette is normal in size.",
    "hila": "The hila are unremarkable.",
    "diaphragms and costophrenic angles": "The diaphragms are normal and the costophrenic angles are sharp.",
    "bones": "No acute osseous abnormality.",
    "devices": "No support devices are seen.",
}

# A region's standard negative when a finding elsewhere would contradict it: an effusion blunts
# the costophrenic angle, so "the costophrenic angles are sharp" cannot stand beside one.
REGION_NEGATIVE_BESIDE: dict[tuple[str, str], str] = {
    ("diaphragms and costophrenic angles", "Pleural Effusion"): "The diaphragms are normal.",
}

# Stated inside an abnormal region for each of its key observations the report never mentions.
OBSERVATION_NEGATIVE: dict[str, str] = {
    "Consolidation": "focal consolidation",
    "Edema": "pulmonary edema",
    "Pleural Effusion": "pleural effusion",
    "Pneumothorax": "pneumothorax",
    "Fracture": "acute fracture",
    "Enlarged Cardiomediastinum": "mediastinal widening",
}


def regions_in(text: str, mentions: list | None = None) -> set[str]:
    """Regions `text` talks about: region keywords, plus the regions of the labeler's mentions."""
    if mentions is None:
        mentions = extract_mentions(text)
    found = {r for r, pat in REGION_PATTERNS.items() if pat.search(text)}
    return found | {OBSERVATION_REGION[m.observation] for m in mentions if m.observation in OBSERVATION_REGION}


def missing_regions(text: str) -> list[str]:
    """Regions (in the fixed order) that `text` never mentions."""
    found = regions_in(text)
    return [r for r in REGIONS if r not in found]


def region_negative(region: str, abnormal: set[str]) -> str:
    """The standard negative of a region with no finding, given the report's positive observations."""
    for (r, observation), text in REGION_NEGATIVE_BESIDE.items():
        if r == region and observation in abnormal:
            return text
    return REGION_NEGATIVE[region]


def negatives_phrase(observations: list[str]) -> str:
    """'No pleural effusion or pneumothorax.' for the given unmentioned observations."""
    terms = [OBSERVATION_NEGATIVE[o] for o in observations if o in OBSERVATION_NEGATIVE]
    if not terms:
        return ""
    joined = terms[0] if len(terms) == 1 else ", ".join(terms[:-1]) + " or " + terms[-1]
    return f"No {joined}."

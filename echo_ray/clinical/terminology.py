"""Deterministic text clean-up and terminology mapping for raw radiology report sections.

What it does to a raw section, in order: drops dictation/signature boilerplate, unifies
de-identification blanks (IU "XXXX", MIMIC "___") to "___", removes list numbering ("1. ",
"2) "), rewrites ALL-CAPS text in sentence case, expands common abbreviations and maps
discouraged terms to the preferred ones (Fleischner Society glossary: "infiltrate" ->
"opacity"; "air space" -> "airspace"), and splits into sentences that each end with a period.

Usage:
    sentences("1. NO ACUTE CARDIOPULMONARY PROCESS. 2. Small L effusion")
    # ['No acute cardiopulmonary process.', 'Small left effusion.']
"""

from __future__ import annotations

import re

_I = re.IGNORECASE
_BOILERPLATE = re.compile(
    r"(?:dictated by|electronically signed|signed by|i have (?:personally )?reviewed|wet read"
    r"|discussed with|findings (?:were )?discussed|communicated to|notified|telephone notification"
    r"|attending (?:physician|radiologist) statement)[^.]*\.?",
    _I,
)
_XXXX = re.compile(r"\bX{3,}\b|_{2,}")
_XRAY = re.compile(r"\bx-___", _I)
_NUMBERING = re.compile(r"(?:(?<=^)|(?<=[\s.]))\(?\d{1,2}[.)](?=\s+[A-Za-z])")
_SPACE = re.compile(r"\s+")
_GLUED = re.compile(r"(?<=[a-z])\.(?=[A-Z][a-z])")  # "apex.There are" -> "apex. There are"
_SENT = re.compile(r"(?<=[.!?])\s+|;\s+")

# (pattern, replacement): abbreviations and preferred terms; applied case-insensitively.
TERMS: list[tuple[str, str]] = [
    (r"\bw/o\b", "without"),
    (r"\bw/", "with "),
    (r"\bb/l\b|\bbilat\b", "bilateral"),
    (r"\bs/p\b", "status post"),
    (r"\br/o\b", "rule out"),
    (r"\bptx\b", "pneumothorax"),
    (r"\bchf\b", "congestive heart failure"),
    (r"\bcopd\b", "chronic obstructive pulmonary disease"),
    (r"\bett\b", "endotracheal tube"),
    (r"\bng tube\b|\bngt\b", "nasogastric tube"),
    (r"\bog tube\b|\bogt\b", "orogastric tube"),
    (r"\bij\b", "internal jugular"),
    (r"\bsvc\b", "superior vena cava"),
    (r"\bcp angles?\b", "costophrenic angle"),
    (r"\batx\b", "atelectasis"),
    (r"\bpulm\b", "pulmonary"),
    (r"\bcabg\b", "coronary artery bypass grafting"),
    (r"\binfiltrates\b", "opacities"),
    (r"\binfiltrate\b", "opacity"),
    (r"\bair space\b", "airspace"),
    (r"\bl(?= (?:upper|lower|mid|apical|basilar|pleural|lung|effusion|hemithorax)\b)", "left"),
    (r"\br(?= (?:upper|lower|mid|apical|basilar|pleural|lung|effusion|hemithorax)\b)", "right"),
    (r"\brll\b", "right lower lobe"),
    (r"\brul\b", "right upper lobe"),
    (r"\brml\b", "right middle lobe"),
    (r"\blll\b", "left lower lobe"),
    (r"\blul\b", "left upper lobe"),
]
_TERMS = [(re.compile(p, _I), r) for p, r in TERMS]


def _sentence_case(text: str) -> str:
    letters = [c for c in text if c.isalpha()]
    if letters and sum(c.isupper() for c in letters) / len(letters) > 0.8:
        text = text.lower()
    return text


def clean(text: str) -> str:
    """Clean one raw section into a single normalized line (see module doc)."""
    t = _BOILERPLATE.sub(" ", text or "")
    t = _XRAY.sub("x-ray", _XXXX.sub("___", t))
    t = _NUMBERING.sub(" ", t)
    t = _GLUED.sub(". ", t)
    t = _SPACE.sub(" ", t).strip()
    for pat, rep in _TERMS:
        t = pat.sub(rep, t)
    return _SPACE.sub(" ", t).strip()


def _finish(s: str) -> str:
    s = s.strip(" ,;")
    if not s:
        return ""
    s = s[0].upper() + s[1:]
    return s if s[-1] in ".!?" else s + "."


def sentences(text: str) -> list[str]:
    """Cleaned sentences of a raw section, each capitalized and ending with a period."""
    out = []
    for part in _SENT.split(clean(text)):
        s = _finish(_sentence_case(part))
        if re.search(r"[A-Za-z]{2,}", s) and s not in out:
            out.append(s)
    return out

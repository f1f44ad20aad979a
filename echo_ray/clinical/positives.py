"""One standard wording for a simple positive finding sentence: terminology standardization.

The paper's normalization "standardizes terminology" (echo-paper-summary.txt, "Standardization");
`regions.py` does it for normal regions (one standard negative each). This does it for a sentence
that states one finding and nothing else, so "There is a right pleural effusion with blunting of
the right costophrenic angle.", "Blunting of the right costophrenic angle consistent with a small
effusion." and "Small right pleural effusion." read "Right pleural effusion." / "Small right
pleural effusion.": every qualifier the source gives (severity, pattern, side, lobe, location) is
kept, in one order; only filler words and the finding's own radiographic sign ("blunting of the
costophrenic angle" for an effusion, "visible pleural line" for a pneumothorax, "haziness" for
edema, "airspace" for consolidation) are dropped. A one-step decoder writes a block of positions
at once and cannot tell from the image which of several wordings of different lengths a report
chose; mixing them inside a block used to garble the rest of the report (docs/method.md).

A sentence is rewritten only when every word is known (the finding's terms and signs, the
qualifiers below, a few function words) and the labeler finds that one finding, positive, and
nothing else; anything else (a hedge, a negation, a second finding, a comparison, a measurement,
any unknown word) keeps its wording. English only.

Usage:
    standard_positive("Blunting of the left costophrenic angle consistent with a small effusion.")
    # 'Small left pleural effusion.'
    standard_positive("Small left effusion, new since the prior study.")   # None: kept as written
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from echo_ray.clinical.labeler import POSITIVE, extract_mentions


@dataclass(frozen=True)
class _Finding:
    words: frozenset[str]  # the finding's own terms and the signs its standard wording leaves implied
    noun: str  # its standard term


_FINDINGS: dict[str, _Finding] = {
    "Pleural Effusion": _Finding(frozenset({"pleural", "effusion", "blunting", "costophrenic", "angle"}),
                                 "pleural effusion"),
    "Pneumothorax": _Finding(frozenset({"pneumothorax", "pleural", "line", "visible"}), "pneumothorax"),
    "Consolidation": _Finding(frozenset({"consolidation", "airspace"}), "consolidation"),
    "Edema": _Finding(frozenset({"edema", "pulmonary", "interstitial", "haziness"}), "pulmonary edema"),
    # "large" says the heart is enlarged ("The heart is large."), not how much
    "Cardiomegaly": _Finding(frozenset({"cardiomegaly", "heart", "cardiac", "silhouette", "enlarged", "large"}),
                             "cardiomegaly"),
}
# Observations a finding's sign words raise in the labeler besides the finding ("haziness").
_SIGN_OBSERVATIONS = {"Lung Opacity"}

_SEVERITY = {"trace": "trace", "small": "small", "tiny": "small", "mild": "mild", "mildly": "mild",
             "moderate": "moderate", "moderately": "moderate", "large": "large", "severe": "severe"}
_PATTERN = ("patchy", "focal", "diffuse", "multifocal")
_SIDE = ("bilateral", "left", "right")
_LOCATION = ("apical", "basilar", "perihilar")
_LOBE = ("upper", "middle", "lower")
_FUNCTION = frozenset({"there", "is", "are", "a", "an", "the", "with", "of", "in", "consistent", "seen",
                       "noted", "present", "identified", "lobe", "at"})
_WORD = re.compile(r"[a-z]+")
_ALLOWED = _FUNCTION | set(_SEVERITY) | set(_PATTERN) | set(_SIDE) | set(_LOCATION) | set(_LOBE)
_ANY_FINDING_WORD = frozenset().union(*(f.words for f in _FINDINGS.values()))


def _one_of(words: list[str], options) -> list[str]:
    """The distinct options present in `words`, in `options` order."""
    return [o for o in options if o in words]


def _qualifiers(words: list[str], finding: _Finding) -> list[str] | None:
    """[severity, pattern, side, location/lobe] words present, or None when one slot is ambiguous."""
    severity = sorted({_SEVERITY[w] for w in words if w in _SEVERITY and w not in finding.words})
    slots = [severity, _one_of(words, _PATTERN), _one_of(words, _SIDE), _one_of(words, _LOCATION),
             _one_of(words, _LOBE)]
    if any(len(s) > 1 for s in slots) or (slots[4] and "lobe" not in words) or ("lobe" in words and not slots[4]):
        return None
    severity, pattern, side, location, lobe = slots
    return severity + pattern + side + location + ([lobe[0], "lobe"] if lobe else [])


def standard_positive(sentence: str) -> str | None:
    """The standard wording of a sentence that states one positive finding (module doc), else None."""
    if re.search(r"[^A-Za-z ,.]", sentence.strip()):  # digits, other scripts, other punctuation
        return None
    words = _WORD.findall(sentence.lower())
    if any(w not in _ALLOWED and w not in _ANY_FINDING_WORD for w in words):
        return None  # most sentences stop here, before the labeler (rules.py runs it on them again)
    mentions = extract_mentions(sentence)
    observations = {m.observation for m in mentions} - _SIGN_OBSERVATIONS
    if len(observations) != 1 or any(m.status != POSITIVE for m in mentions):
        return None
    finding = _FINDINGS.get(observations.pop())
    if finding is None or any(w not in _ALLOWED and w not in finding.words for w in words):
        return None
    qualifiers = _qualifiers(words, finding)
    if qualifiers is None:
        return None
    noun = "interstitial edema" if finding.noun == "pulmonary edema" and "interstitial" in words else finding.noun
    text = " ".join(qualifiers + [noun])
    return text[0].upper() + text[1:] + "."

"""Rule-based chest X-ray finding labeler with negation and uncertainty, CheXpert style.

Reference: Irvin et al., "CheXpert: A Large Chest Radiograph Dataset with Uncertainty Labels and
Expert Comparison", AAAI 2019 (labeler: mention extraction -> classification -> aggregation). The
CheXpert labeler finds negation/uncertainty with NegBio dependency patterns; this one has no parser,
so a cue's scope is its clause: the sentence cut at hard breaks ("but", "however", "although", ...)
and at commas that open a new assertion (", small ...", ", there is ...", ", no ..."). Inside that
scope the cue nearest before the finding wins; with none before it, cues after the finding
("... is not seen", "... cannot be excluded", "... has resolved") decide. A negation also governs a
later hedge in its scope ("no opacity to suggest pneumonia" is negative); requests such as
"evaluate for" / "correlate clinically for" count as uncertain, not as assertions.

Two kinds of phrase rules per observation:
  * finding terms ("cardiomegaly", "pleural effusion"): status from the cues around them;
  * anatomy + attribute ("heart size is enlarged" -> 1, "heart size is normal" -> 0), where the
    attribute word is the anchor that cues must precede ("heart is not enlarged" -> 0).

Aggregation as CheXpert: per observation positive (1) beats uncertain (-1) beats negative (0); only
mentioned observations appear; "No Finding" is 1 when no observation other than Support Devices is
positive or uncertain. Text with no clinical content (see `has_clinical_content`) gets no "No
Finding" at all, so an empty generation earns no credit. IU X-ray anonymization tokens ("XXXX")
are kept as an opaque word, so "no XXXX of a pleural effusion" is still negated. Chinese is best
effort (a short term list; clauses end at "，。；").

Usage:
    label_report("Small left pleural effusion. No pneumothorax.")
    # {'Pleural Effusion': 1, 'Pneumothorax': 0, 'No Finding': 0}
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

OBSERVATIONS: tuple[str, ...] = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)

POSITIVE, NEGATIVE, UNCERTAIN = 1, 0, -1


@dataclass(frozen=True)
class Mention:
    observation: str
    status: int
    phrase: str  # the matched text, lowercased
    sentence: str  # the sentence it came from, as written


# Anatomy subjects and attributes shared by the two cardiomediastinal observations.
_HEART = r"(?:heart|cardiac (?:silhouette|shadow|size|contours?)|heart size|cardiac)"
_MEDIAST = r"(?:cardiomediastinal|mediastinal|mediastinum)(?: (?:silhouette|contours?|structures|width|size))?"
_ENLARGED = r"(?P<anchor>enlarged|enlargement|large|widened|widening|prominent|prominence|increased)"
_NORMAL = r"(?:normal|within normal limits|unremarkable|upper limits? of normal|top (?:of )?normal|not enlarged)"
_GAP = r"[^,;:]{0,40}?"  # anatomy and its attribute stay inside one comma-free stretch

# (observation, pattern, fixed status or None). A group named "anchor" marks the word cues must
# precede; otherwise the whole match is the anchor. Fixed-status rules state a normal finding.
_EN_RULES: list[tuple[str, str, Optional[int]]] = [
    ("Enlarged Cardiomediastinum", r"(?:normal|unremarkable) (?:size of the )?" + _MEDIAST, NEGATIVE),
    ("Enlarged Cardiomediastinum", r"\b" + _MEDIAST + r"\b" + _GAP + r"\b" + _NORMAL + r"\b", NEGATIVE),
    ("Enlarged Cardiomediastinum", r"\b" + _MEDIAST + r"\b" + _GAP + r"\b" + _ENLARGED + r"\b", None),
    ("Enlarged Cardiomediastinum", r"(?<![\w-])(?:enlarged|widened|wide|prominent) (?:superior |upper )?"
     r"(?:cardio)?mediastin\w*", None),
    ("Enlarged Cardiomediastinum", r"(?:widening|prominence|enlargement) of the (?:superior |upper )?"
     r"(?:cardio)?mediastinum", None),
    ("Cardiomegaly", r"cardiomegaly|cardiac enlargement|enlarged (?:heart|cardiac (?:silhouette|shadow|contour))"
     r"|enlargement of the (?:heart|cardiac silhouette)", None),
    ("Cardiomegaly", r"normal(?:[- ]sized?)? (?:heart|cardiac silhouette|cardiac size)", NEGATIVE),
    ("Cardiomegaly", r"\b" + _HEART + r"\b" + _GAP + r"\b" + _NORMAL + r"\b", NEGATIVE),
    ("Cardiomegaly", r"\b" + _HEART + r"\b" + _GAP + r"\b" + _ENLARGED + r"\b", None),
    ("Lung Opacity", r"opaci\w*|infiltrat\w*|air[- ]?space (?:disease|process|opacit\w*)"
     r"|(?:increased |nodular )?densit(?:y|ies)(?! of the bones)|interstitial (?:markings?|pattern|prominence|lung disease|disease|thickening)"
     r"|reticula\w*|scar(?:ring|s)?\b|ground[- ]glass|hazy|haziness|peribronchial (?:thickening|cuffing)"
     r"|bronchial wall thickening|increased (?:lung |pulmonary |interstitial |bronchovascular )?markings", None),
    ("Lung Lesion", r"nodules?\b|nodularity|nodular (?:densit|opacit)\w*|\bmass(?:es)?\b|\blump\b|cavitary lesion|(?:lung|pulmonary) lesion"
     r"|mass[- ]?like|carcinoma|neoplasm|tumou?r|malignan\w*|nodular (?:lesion|infiltrat\w*)", None),
    ("Edema", r"(?<!soft tissue )edema|(?:pulmonary|vascular|venous) congestion|heart failure|\bchf\b"
     r"|cephalization|kerley", None),
    ("Consolidation", r"consolidat\w*", None),
    ("Pneumonia", r"pneumonia|bronchopneumonia|pneumonitis|(?<!granulomatous )infecti\w*", None),
    ("Atelectasis", r"atelecta\w*|(?:lobar|lung|lobe) collapse|collapse of the", None),
    ("Pneumothorax", r"\w*pneumothora\w*", None),
    ("Pleural Effusion", r"(?<!pericardial )(?<!joint )(?:pleural )?effusions?|pleural fluid|hydrothorax", None),
    ("Pleural Other", r"pleural (?:thickening|plaques?|calcifications?|scar\w*)|thickening of the pleura"
     r"|fibrothorax|(?:apical|pleural) cap(?:ping|s)?\b|pleuro-?parenchymal (?:scar\w*|thickening)"
     r"|pleural-parenchymal (?:scar\w*|thickening)", None),
    ("Fracture", r"fractur\w*|\bfx\b", None),
    ("Support Devices", r"\btubes?\b|catheters?|\bpicc\b|(?:central|venous|arterial|picc|jugular|subclavian)"
     r" (?:venous )?(?:line|catheter)s?|pacemaker|\bpacer\b|defibrillator|\ba?icd\b|\bleads?\b|wires?\b"
     r"|\bclips?\b|staples|\bstents?\b|tubing|\bshunt\b|stimulator|(?:distal )?\btip (?:projects|projecting"
     r"|overlies|overlying|terminates|terminating|is|in|at)\b|prosthe\w+|valve replacement|hardware|\bplates?\b"
     r"|screws?|fixation|\bdrains?\b|cannula|\bcoils?\b|arthroplast\w*|mediport|port-?a-?cath"
     r"|\bport\b|device|generator|endotracheal|nasogastric|enteric", None),
]

# Chinese best effort: a few standard terms; normal statements as fixed negatives.
_ZH_RULES: list[tuple[str, str, Optional[int]]] = [
    ("Enlarged Cardiomediastinum", r"纵隔(?:影)?增宽|纵隔(?:影)?增大", None),
    ("Enlarged Cardiomediastinum", r"纵隔(?:影)?(?:居中)?(?:未见)?(?:正常|无增宽|未见增宽)", NEGATIVE),
    ("Cardiomegaly", r"心影(?:明显|稍|轻度)?(?:增大|扩大)|心脏(?:明显|稍|轻度)?(?:增大|扩大)", None),
    ("Cardiomegaly", r"心影(?:大小|形态)?(?:大小)?(?:正常|不大|未见增大|未见扩大)", NEGATIVE),
    ("Lung Opacity", r"斑片(?:状)?影|(?:高)?密度(?:增高)?影|渗出|浸润|磨玻璃|模糊影", None),
    ("Lung Lesion", r"结节|肿块|占位|肿瘤", None),
    ("Edema", r"水肿|淤血", None),
    ("Consolidation", r"实变", None),
    ("Pneumonia", r"肺炎|感染", None),
    ("Atelectasis", r"肺不张", None),
    ("Pneumothorax", r"气胸", None),
    ("Pleural Effusion", r"胸腔积液|胸水|积液", None),
    ("Pleural Other", r"胸膜(?:增厚|粘连|钙化)", None),
    ("Fracture", r"骨折", None),
    ("Support Devices", r"导管|置管|插管|起搏器|引流管|支架|金属(?:缝合)?线|胸骨固定", None),
]

_CUE_FLAGS = re.IGNORECASE
_EN_PRE_UNC = re.compile(
    r"\b(?:may|might|could|possible|possibly|probable|probably|(?<!un)likely|questionable|question of"
    r"|suspicious|suspect(?:ed)?|concern(?:ing)? for|cannot (?:be )?(?:excluded?|ruled? out)"
    r"|can ?not (?:exclude|rule out)|difficult to exclude|not (?:be )?excluded|rule out|r/o|differential"
    r"|versus|vs\.?|suggest\w*|borderline|equivocal|indeterminate|presum\w+|suspicion|atypical"
    r"|(?:clinical )?correlat\w* (?:clinically )?for|evaluat\w* (?:for|of)|assess\w* (?:for|of))\b",
    _CUE_FLAGS,
)
_EN_PRE_NEG = re.compile(
    r"\b(?:no(?! (?:significant |interval |appreciable )?(?:change|increase|decrease|worsening|improvement))"
    r"|not|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|removal of"
    r"|no longer|nor|never|unlikely|rather than|instead of)\b",
    _CUE_FLAGS,
)
_EN_POST_UNC = re.compile(
    r"\b(?:cannot|can not|could not|can't|not) (?:be )?(?:entirely |completely |definitely )?"
    r"(?:excluded|ruled out)|\bnot excluded|\bis (?:questioned|suspected|possible|likely|probable)\b"
    r"|\b(?:versus|vs)\b|\bor (?:atelectasis|pneumonia|consolidation|infection|scar\w*|effusion|edema)\b",
    _CUE_FLAGS,
)
_EN_POST_NEG = re.compile(
    r"\b(?:not|no longer)\s+(?:\w+\s+)?(?:seen|identified|present|demonstrated|visualized|visible|evident"
    r"|appreciated|noted|detected|apparent|shown|observed|enlarged|definitely seen)\b"
    r"|\b(?:absent|resolved|cleared|unlikely|removed)\b",
    _CUE_FLAGS,
)
_ZH_PRE_UNC = re.compile(r"可能|考虑|不除外|不排除|疑似|可疑|疑|待排|似")
_ZH_PRE_NEG = re.compile(r"未见|未发现|无|没有|未|排除|否认")
_ZH_POST_UNC = re.compile(r"可能|不除外|不排除|待排")
_ZH_POST_NEG = re.compile(r"已吸收|消失|未见|已拔除")

# Hard clause breaks end every cue's scope; soft breaks are commas that open a new assertion.
_EN_HARD = re.compile(
    r"\b(?:but|however|although|though|whereas|except|aside from|apart from|otherwise|nevertheless"
    r"|and (?:there|the)|which (?:is|are|may|could|might)|with the exception of)\b",
    _CUE_FLAGS,
)
_EN_SOFT = re.compile(
    r",\s*(?=(?:and\s+)?(?:no|there|the|this|these|with|likely|possible|probable|possibly|heart|lungs?"
    r"|cardiac|mediastin\w*|consistent|suggest\w*|may|is|are|which)\b)",
    _CUE_FLAGS,
)
# A comma before a size/course word starts a new assertion ("no effusion, small pneumothorax")
# unless the clause goes on as a list ("no consolidation, large effusion, or pneumothorax").
_EN_WEAK_SOFT = re.compile(
    r",\s*(?=(?:and\s+)?(?:small|mild|mildly|moderate|large|trace|tiny|minimal|stable|unchanged"
    r"|increased|decreased|persistent|new)\b)",
    _CUE_FLAGS,
)
# "no definite effusion seen, dense nodule ..." - a verb closing the negated phrase ends its scope.
_EN_DONE = re.compile(r"\b(?:seen|identified|noted|present|demonstrated|visualized|evident)\s*,", _CUE_FLAGS)
_LIST_CONJ = re.compile(r"\b(?:or|nor)\b", _CUE_FLAGS)
_EN_SENT = re.compile(r"(?<!\d)\.(?!\d)|[;?!\n]|:(?=\s)|\s\d\.\s")
_ZH_SENT = re.compile(r"[。；;\n！？!?]")
_ZH_CLAUSE = re.compile(r"[，,]")
_XXXX = re.compile(r"\bx{2,}\b", re.IGNORECASE)
_CJK = re.compile(r"[\u4e00-\u9fff]")

_NORMAL_STATEMENTS = re.compile(
    r"lungs? (?:are |is |appear |remain )?(?:\w+ )?clear|clear lungs|normal chest|no (?:acute|active)"
    r"|unremarkable|within normal limits|normal (?:heart|cardiac|cardiomediastinal|mediastinal|lungs?)"
    r"|no (?:active|significant|focal) (?:disease|abnormalit|finding)|negative (?:chest|study|exam)"
    r"|(?:heart|lungs?|mediastinum|pleura|bones?|osseous)\b[^.]{0,40}\bnormal|\b(?:are|is|appears?) normal\b"
    r"|\b(?:acute|active) (?:cardiopulmonary|pulmonary|cardiac|intrathoracic|thoracic|chest|disease|process)"
    r"|心肺未见|未见明显异常|未见异常|双肺纹理清晰|心影大小正常|正常",
    _CUE_FLAGS,
)
# Chest findings outside the 14 observations still make a report clinically usable.
_CHEST_FINDINGS = re.compile(
    r"emphysema|hyperinflat\w*|hyperexpan\w*|granulom\w*|calcifi\w*|hemidiaphragm|lung volumes"
    r"|spondylosis|scoliosis|kyphosis|osteophyte|degenerative|tortuous|hernia|copd|bronchiectasis"
    r"|lymphadenopathy|adenopathy|sarcoidosis|tuberculosis|fibrosis"
    r"|肺气肿|钙化|膈|脊柱",
    _CUE_FLAGS,
)


def _compile(rules: list[tuple[str, str, Optional[int]]]) -> list[tuple[str, re.Pattern, Optional[int]]]:
    return [(obs, re.compile(pat, _CUE_FLAGS), fixed) for obs, pat, fixed in rules]


_EN_COMPILED = _compile(_EN_RULES)
_ZH_COMPILED = _compile(_ZH_RULES)


def _sentences(text: str, zh: bool) -> list[str]:
    """Split into sentences (English also on list numbers "1." and on "Label: " colons)."""
    parts = (_ZH_SENT if zh else _EN_SENT).split(text)
    return [p.strip() for p in parts if p and p.strip()]


def _clauses(sentence: str, zh: bool) -> list[str]:
    """Cut a sentence at hard breaks; commas stay (lists like "no A, B, or C" share one cue)."""
    if zh:
        return [c for c in _ZH_CLAUSE.split(sentence) if c.strip()]
    cuts = [0] + [m.start() for m in _EN_HARD.finditer(sentence)] + [len(sentence)]
    return [sentence[a:b] for a, b in zip(cuts, cuts[1:]) if sentence[a:b].strip()]


def _nearest(pattern: re.Pattern, text: str) -> int:
    """End offset of the last match of `pattern` in `text`, or -1."""
    ends = [m.end() for m in pattern.finditer(text)]
    return ends[-1] if ends else -1


def _soft_breaks(clause: str) -> list[int]:
    """Offsets where a comma opens a new assertion inside an English clause."""
    breaks = [m.end() for m in _EN_SOFT.finditer(clause)] + [m.end() for m in _EN_DONE.finditer(clause)]
    for m in _EN_WEAK_SOFT.finditer(clause):
        if not _LIST_CONJ.search(clause, m.end()):
            breaks.append(m.end())
    return breaks


def _status(clause: str, a0: int, a1: int, zh: bool) -> int:
    """Classify the finding at clause[a0:a1] from the cues in its scope."""
    if zh:
        start, stop = 0, len(clause)
        pre_unc, pre_neg, post_unc, post_neg = _ZH_PRE_UNC, _ZH_PRE_NEG, _ZH_POST_UNC, _ZH_POST_NEG
    else:
        breaks = _soft_breaks(clause)
        start = max([b for b in breaks if b <= a0], default=0)
        stop = min([b for b in breaks if b >= a1], default=len(clause))
        pre_unc, pre_neg, post_unc, post_neg = _EN_PRE_UNC, _EN_PRE_NEG, _EN_POST_UNC, _EN_POST_NEG
    before, after = clause[start:a0], clause[a1:stop]
    unc, neg = _nearest(pre_unc, before), _nearest(pre_neg, before)
    # A negation governs a later hedge in its scope: "no opacity to suggest pneumonia" is negative.
    if neg >= 0:
        return NEGATIVE
    if unc >= 0:
        return UNCERTAIN
    if post_unc.search(after):
        return UNCERTAIN
    if post_neg.search(after):
        return NEGATIVE
    return POSITIVE


def _clause_mentions(clause: str, sentence: str, zh: bool) -> list[Mention]:
    """All mentions in one clause; per observation, overlapping matches keep the first rule's."""
    low = _XXXX.sub(lambda m: "x" * len(m.group()), clause.lower())
    taken: dict[str, list[tuple[int, int]]] = {}
    found: list[tuple[int, Mention]] = []
    for obs, pattern, fixed in _ZH_COMPILED if zh else _EN_COMPILED:
        for m in pattern.finditer(low):
            spans = taken.setdefault(obs, [])
            if any(m.start() < b and a < m.end() for a, b in spans):
                continue
            spans.append(m.span())
            a0, a1 = m.span("anchor") if "anchor" in pattern.groupindex else m.span()
            status = fixed if fixed is not None else _status(low, a0, a1, zh)
            found.append((m.start(), Mention(obs, status, m.group(), sentence)))
    return [mention for _, mention in sorted(found, key=lambda t: t[0])]


def extract_mentions(text: str) -> list[Mention]:
    """Every observation mention in `text`, in reading order, with its status (1, 0 or -1)."""
    if not isinstance(text, str):
        raise TypeError(f"extract_mentions expects str, got {type(text).__name__}")
    zh = bool(_CJK.search(text))
    out: list[Mention] = []
    for sentence in _sentences(text, zh):
        for clause in _clauses(sentence, zh):
            out.extend(_clause_mentions(clause, sentence, zh))
    return out


def aggregate(mentions: list[Mention], clinical: bool = True) -> dict[str, int]:
    """CheXpert aggregation: positive > uncertain > negative; adds "No Finding" when `clinical`."""
    rank = {POSITIVE: 2, UNCERTAIN: 1, NEGATIVE: 0}
    labels: dict[str, int] = {}
    for m in mentions:
        if m.observation not in labels or rank[m.status] > rank[labels[m.observation]]:
            labels[m.observation] = m.status
    if clinical:
        abnormal = any(o != "Support Devices" and s != NEGATIVE for o, s in labels.items())
        labels["No Finding"] = NEGATIVE if abnormal else POSITIVE
    return labels


def label_report(text: str) -> dict[str, int]:
    """Observation -> status for mentioned observations, plus "No Finding" (see module doc)."""
    mentions = extract_mentions(text)
    return aggregate(mentions, clinical=bool(mentions) or has_clinical_content(text))


def has_clinical_content(text: str) -> bool:
    """True when the text mentions an observation, states a normal finding ("lungs are clear"), or
    names a common chest finding outside the 14 observations ("emphysema", "granuloma")."""
    if not isinstance(text, str) or not text.strip():
        return False
    if _NORMAL_STATEMENTS.search(text) or _CHEST_FINDINGS.search(text):
        return True
    return bool(extract_mentions(text))

"""Split a free-text radiology report into its sections (FINDINGS:, IMPRESSION:, INDICATION:, ...).

Follows the header conventions of MIMIC-CXR's official section parser (Johnson et al., MIMIC-CXR
code repository, `txt/section_parser.py`): headers are a known name, in any case, followed by a
colon at the start of a line or sentence; CONCLUSION/SUMMARY count as impression, HISTORY/REASON
FOR EXAM/CLINICAL INFORMATION as indication. When a report has neither FINDINGS nor IMPRESSION,
the text after the last non-report header (or the whole body) is taken as findings, as MIMIC's
parser does with its last paragraph.

Usage:
    s = parse_report_text("EXAMINATION: CHEST (PA AND LAT)\\nFINDINGS: ...\\nIMPRESSION: ...")
    s.findings, s.impression, s.indication, s.exam
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Header name (lower-case, single spaces) -> canonical section.
_HEADERS: dict[str, str] = {
    "findings": "findings",
    "finding": "findings",
    "findings and impression": "findings",
    "report": "findings",
    "impression": "impression",
    "impressions": "impression",
    "conclusion": "impression",
    "conclusions": "impression",
    "summary": "impression",
    "opinion": "impression",
    "indication": "indication",
    "indications": "indication",
    "history": "indication",
    "clinical history": "indication",
    "clinical information": "indication",
    "clinical indication": "indication",
    "reason for exam": "indication",
    "reason for examination": "indication",
    "examination": "exam",
    "exam": "exam",
    "procedure": "exam",
    "study": "exam",
    "type of examination": "exam",
    "technique": "technique",
    "comparison": "comparison",
    "comparisons": "comparison",
    "notification": "other",
    "recommendation": "other",
    "recommendations": "other",
    "recommendation(s)": "other",
    "wet read": "other",
    "addendum": "other",
    "final report": "other",
}
_HEADER_RE = re.compile(
    r"(?:^|(?<=[\n.]))[ \t]*(?P<name>"
    + "|".join(sorted((re.escape(h).replace(r"\ ", r"\s+") for h in _HEADERS), key=len, reverse=True))
    + r")[ \t]*:",
    re.IGNORECASE,
)
_FINAL_REPORT = re.compile(r"^\s*final report\s*$", re.IGNORECASE | re.MULTILINE)
_SPACE = re.compile(r"\s+")


@dataclass(frozen=True)
class Sections:
    findings: str
    impression: str
    indication: str
    exam: str
    comparison: str


def _clean(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def parse_report_text(text: str) -> Sections:
    """Sections of one report; absent sections are empty strings. Pure, never raises."""
    body = _FINAL_REPORT.sub("", text or "")
    found: dict[str, list[str]] = {}
    matches = list(_HEADER_RE.finditer(body))
    preamble = body[: matches[0].start()] if matches else body
    for m, nxt in zip(matches, matches[1:] + [None]):
        name = _SPACE.sub(" ", m.group("name").lower())
        content = body[m.end() : nxt.start() if nxt else len(body)]
        found.setdefault(_HEADERS[name], []).append(_clean(content))
    get = lambda key: " ".join(x for x in found.get(key, []) if x)  # noqa: E731
    findings, impression = get("findings"), get("impression")
    if not findings and not impression:
        # No report sections: the body is either the preamble (no headers at all) or the text
        # of the last header that is not indication/exam/comparison/technique.
        if not matches:
            findings = _clean(preamble)
        elif _HEADERS[_SPACE.sub(" ", matches[-1].group("name").lower())] == "other":
            findings = ""
        else:
            tail = body[matches[-1].end() :]
            para = [p for p in re.split(r"\n\s*\n", tail) if p.strip()]
            findings = _clean(para[-1]) if len(para) > 1 else ""
    return Sections(
        findings=findings,
        impression=impression,
        indication=get("indication"),
        exam=get("exam"),
        comparison=get("comparison"),
    )

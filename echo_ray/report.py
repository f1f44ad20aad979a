"""The serialized report format that training targets and decoders share (method.md, "Data").

English: ``Findings: <findings> Impression: <impression>``; Chinese: ``所见：<findings> 结论：<impression>``.
The model emits this text followed by EOS; `parse_report` turns generated text back into sections
and says whether both were present, which evaluation counts as structural stability.

Usage:
    text = format_report("Heart size normal.", "No acute disease.", "en")
    parse_report(text)  # ParsedReport(findings='Heart size normal.', impression='No acute disease.', ...)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Language = Literal["en", "zh"]

SECTION_HEADERS: dict[str, tuple[str, str]] = {
    "en": ("Findings:", "Impression:"),
    "zh": ("所见：", "结论："),
}

# Accept either language's headers (and ASCII/full-width colons) when parsing model output.
_FINDINGS_RE = re.compile(r"(?:findings|所见)\s*[:：]", re.IGNORECASE)
_IMPRESSION_RE = re.compile(r"(?:impression|结论)\s*[:：]", re.IGNORECASE)


@dataclass(frozen=True)
class ParsedReport:
    findings: str
    impression: str
    has_findings: bool
    has_impression: bool

    @property
    def complete(self) -> bool:
        return self.has_findings and self.has_impression

    def as_dict(self) -> dict[str, str]:
        return {"findings": self.findings, "impression": self.impression}


def format_report(findings: str, impression: str, language: Language = "en") -> str:
    """Serialize two sections in the model's target format (no EOS)."""
    if language not in SECTION_HEADERS:
        raise ValueError(f"unknown language {language!r}; expected 'en' or 'zh'")
    f_head, i_head = SECTION_HEADERS[language]
    sep = " " if language == "en" else ""
    return f"{f_head}{sep}{findings.strip()} {i_head}{sep}{impression.strip()}"


def parse_report(text: str) -> ParsedReport:
    """Split generated text into findings and impression; missing sections come back empty."""
    f = _FINDINGS_RE.search(text)
    i = _IMPRESSION_RE.search(text, f.end() if f else 0)
    if f and i:
        findings, impression = text[f.end() : i.start()], text[i.end() :]
    elif f:
        findings, impression = text[f.end() :], ""
    elif i:
        findings, impression = text[: i.start()], text[i.end() :]
    else:
        findings, impression = text, ""
    return ParsedReport(
        findings=findings.strip().rstrip(",，").strip(),
        impression=impression.strip(),
        has_findings=f is not None,
        has_impression=i is not None,
    )

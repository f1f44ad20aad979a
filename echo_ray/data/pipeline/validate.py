"""Quarantine checks on adapter records: bad input is set aside with a reason, never dropped.

A record is quarantined (first matching reason wins) when
  * the adapter flagged it (malformed_row, not_utf8, unreadable_file, duplicate_study_id),
  * both report sections are empty (empty_sections),
  * a report field holds something that is not report text, e.g. an image file name, or report
    sections sit in the indication column, or an image path column holds prose (wrong_column),
  * no image is listed (no_images), or a listed image file does not exist (missing_image; only
    when the source's `require_images` is on).

Usage:
    reason = check_record(rec, require_images=True)   # None, or (reason, detail)
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Optional

from echo_ray import storage

_FILE_LIKE = re.compile(r"^\S+\.(?:jpe?g|png|dcm|dicom|txt|csv)$", re.IGNORECASE)
_HAS_WORD = re.compile(r"[A-Za-z\u4e00-\u9fff]{2,}")
_SECTION_HEADER = re.compile(r"\b(?:findings|impression)\s*:", re.IGNORECASE)
_IMAGE_EXT = re.compile(r"\.(?:jpe?g|png|dcm|dicom|tiff?)$", re.IGNORECASE)

Check = Optional[tuple[str, str]]


def _not_report_text(name: str, text: str) -> Check:
    t = text.strip()
    if not t:
        return None
    if _FILE_LIKE.match(t):
        return "wrong_column", f"{name} holds a file name ({t[:80]!r}), not report text"
    return None


def _image_path_problem(path: str) -> Check:
    base = path.rsplit("/", 1)[-1]
    if len(base.split()) >= 4 and not _IMAGE_EXT.search(base):
        return "wrong_column", f"image path column holds free text ({base[:80]!r})"
    return None


def text_checks(rec: dict[str, Any]) -> Check:
    """Checks that need only the record's text fields."""
    if rec.get("issue"):
        return rec["issue"], rec.get("issue_detail") or rec["issue"]
    findings, impression = rec.get("raw_findings") or "", rec.get("raw_impression") or ""
    for name, text in (("findings", findings), ("impression", impression)):
        bad = _not_report_text(name, text)
        if bad:
            return bad
    if not _HAS_WORD.search(findings) and not _HAS_WORD.search(impression):
        if _SECTION_HEADER.search(rec.get("indication") or ""):
            return "wrong_column", "report sections found in the indication column"
        return "empty_sections", "no words in findings or impression"
    for im in rec.get("images") or []:
        bad = _image_path_problem(im.get("path", ""))
        if bad:
            return bad
    return None


def image_checks(rec: dict[str, Any], require_images: bool, exists: Callable[[str], bool]) -> Check:
    images = rec.get("images") or []
    if not images:
        return "no_images", "the source lists no image for this study"
    if require_images:
        missing = [im["path"] for im in images if not exists(im["path"])]
        if missing:
            more = f" (+{len(missing) - 1} more)" if len(missing) > 1 else ""
            return "missing_image", f"image file not found: {missing[0]}{more}"
    return None


class PathExists:
    """Existence test for local paths and s3:// URIs (through echo_ray.storage)."""

    def __call__(self, path: str) -> bool:
        if not storage.is_s3(path):
            return os.path.isfile(path)
        return storage.is_file(path)


def check_record(rec: dict[str, Any], require_images: bool, exists: Callable[[str], bool] | None = None) -> Check:
    """None when the record is usable, else (reason, detail) for the quarantine."""
    return text_checks(rec) or image_checks(rec, require_images, exists or PathExists())

"""Output-format negotiation and rendering: one report as JSON, a DICOM SR, or a FHIR DiagnosticReport.

Every way a report leaves echo_ray (the HTTP route, `echo-ray generate --format`, the PACS loop)
calls these two functions: `negotiate` picks the format from an explicit `format` field (wins) or
the HTTP `Accept` header (default JSON), and `render_report` serializes. An Accept header that names
none of the three media types raises `NotAcceptable`, which the HTTP layer answers with 406; an
unknown `format` value raises `UnknownFormat` (422 over HTTP, exit code 2 on the command line).

Usage:
    fmt = negotiate(request.headers.get("accept"), fields.get("format"))   # "json" | "dicom-sr" | "fhir"
    body, media_type = render_report(json_body, fmt, identity, sources=[pydicom datasets])
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from typing import Any, Literal

from pydicom.dataset import Dataset

from echo_ray.errors import InputError
from echo_ray.interop.identity import ModelIdentity, ReportContent, sr_uids

Format = Literal["json", "dicom-sr", "fhir"]
FORMATS: tuple[str, ...] = ("json", "dicom-sr", "fhir")
MEDIA_TYPES: dict[str, str] = {"json": "application/json", "dicom-sr": "application/dicom", "fhir": "application/fhir+json"}
_BY_MEDIA = {v: k for k, v in MEDIA_TYPES.items()} | {"application/*": "json", "*/*": "json"}


class UnknownFormat(InputError):
    status = 422


class NotAcceptable(InputError):
    status = 406


def _accept_items(accept: str) -> list[tuple[float, str]]:
    items = []
    for part in accept.split(","):
        media, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for p in params:
            if p.lower().startswith("q="):
                try:
                    q = float(p[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0:
            items.append((q, media.lower()))
    return sorted(items, key=lambda x: -x[0])  # stable: equal q keeps the client's order


def negotiate(accept: str | None, fmt: str | None = None) -> str:
    """The output format: `fmt` when given, else the best Accept match, else JSON."""
    if fmt:
        if fmt not in FORMATS:
            raise UnknownFormat(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    if not accept or not accept.strip():
        return "json"
    for _, media in _accept_items(accept):
        if media in _BY_MEDIA:
            return _BY_MEDIA[media]
    raise NotAcceptable(f"none of the Accept media types is available; this route answers "
                        f"{', '.join(MEDIA_TYPES.values())}")  # fmt: skip


def _content(result: Any, language: str | None) -> ReportContent:
    if isinstance(result, ReportContent):
        return result
    if isinstance(result, dict):
        return ReportContent.from_json(result)
    return ReportContent.from_report(result, language or "en")


def render_report(result: Any, fmt: str, identity: ModelIdentity, sources: Sequence[Dataset] = (),
                  language: str | None = None) -> tuple[bytes, str]:  # fmt: skip
    """(body, media type) of `result` (a /v1/reports JSON dict, a GeneratedReport, or ReportContent) as `fmt`.

    `sources`: the DICOM datasets the report was made from (pixel data not needed), for the SR's
    patient/study attributes and evidence and the FHIR ImagingStudy/Patient references.
    """
    if fmt == "json":
        body = result if isinstance(result, dict) else {**vars(_content(result, language))}
        return json.dumps(body).encode("utf-8"), MEDIA_TYPES["json"]
    content = _content(result, language)
    if fmt == "dicom-sr":
        from echo_ray.interop.sr import build_sr

        buf = io.BytesIO()
        build_sr(content, identity, sources).save_as(buf, enforce_file_format=True)
        return buf.getvalue(), MEDIA_TYPES["dicom-sr"]
    if fmt == "fhir":
        from echo_ray.interop.fhir import build_diagnostic_report

        study = str(sources[0].StudyInstanceUID) if sources and "StudyInstanceUID" in sources[0] else None
        patient = str(sources[0].get("PatientID", "")) if sources else ""
        sr_uid = sr_uids(study, identity)[1] if study else None
        report = build_diagnostic_report(content, identity, study, patient or None, sr_uid)
        return report.model_dump_json(exclude_none=True).encode("utf-8"), MEDIA_TYPES["fhir"]
    raise UnknownFormat(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


def dicom_sources(blobs: Sequence[bytes]) -> list[Dataset]:
    """Header datasets of the uploaded files that are DICOM (others are skipped: they carry no study)."""
    import pydicom

    from echo_ray.data.images import is_dicom

    return [pydicom.dcmread(io.BytesIO(b), stop_before_pixels=True) for b in blobs if is_dicom(b)]

"""HTTP schemas of the report service: request fields, JSON bodies, responses, and `ApiError`.

The request body is parsed by hand (`inputs.py`) because one route takes both multipart uploads and
JSON; these pydantic models validate the fields of either and document both shapes in the
generated OpenAPI page (`/docs`). Every refusal is an `ApiError(status, message)` that the app turns
into ``{"error": message, "status": status, "request_id": ...}``.

Usage:
    fields = parse_fields({"language": "zh", "mode": "ar"})   # ReportFields, or ApiError(422)
    raise ApiError(413, "request body of 30000000 bytes exceeds the limit of 20000000")
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

Mode = Literal["onestep", "multistep", "ar"]
Language = Literal["en", "zh"]
OutputFormat = Literal["json", "dicom-sr", "fhir"]


class ApiError(Exception):
    """A request the service refuses: HTTP `status` and a one-line `message` naming the problem."""

    def __init__(self, status: int, message: str, log_message: str | None = None):
        super().__init__(message)
        self.status, self.message = status, message
        self.log_message = log_message or message  # without client-chosen names (file names can hold PHI)


class ReportFields(BaseModel):
    """Decode options shared by the multipart and JSON forms of a report request."""

    model_config = ConfigDict(extra="forbid")

    language: Language = Field("en", description="report language: en or zh")
    mode: Mode = Field("onestep", description="onestep (ECHO, fused KV), multistep (teacher), or ar (baseline)")
    max_new_tokens: Optional[int] = Field(None, ge=1, description="response token budget; default: server's")
    format: Optional[OutputFormat] = Field(
        None, description="POST /v1/reports answer: json (default), dicom-sr (DICOM Comprehensive SR, application/dicom) "
        "or fhir (FHIR R4 DiagnosticReport, application/fhir+json); wins over the Accept header")


class ReportJSON(ReportFields):
    """JSON form: images as base64 strings (or data URLs such as ``data:image/png;base64,...``)."""

    images: list[str] = Field(..., min_length=1, description="1-4 images, base64 PNG, JPEG or DICOM")


class ReportResponse(BaseModel):
    findings: str
    impression: str
    text: str = Field(..., description="the whole generated report")
    language: Language
    model: str
    mode: Mode
    tokens: int = Field(..., description="generated tokens (EOS excluded)")
    forward_passes: int = Field(..., description="model forwards of the (batched) decode this request rode in")
    latency_ms: float = Field(..., description="arrival to answer, batching wait included")
    complete: bool = Field(..., description="both sections present")
    hit_max_length: bool
    batch_size: int = Field(..., description="requests decoded together with this one")


def report_response(report: Any, language: str, model: str, latency_s: float, batch_size: int) -> dict[str, Any]:
    """The /v1/reports body for one `GeneratedReport` (token ids stay server-side)."""
    return ReportResponse(
        findings=report.findings, impression=report.impression, text=report.text, language=language,
        model=model, mode=report.mode, tokens=len(report.tokens), forward_passes=report.forward_passes,
        latency_ms=round(latency_s * 1000, 2), complete=report.complete, hit_max_length=report.hit_max_length,
        batch_size=batch_size,
    ).model_dump()  # fmt: skip


class ErrorResponse(BaseModel):
    error: str
    status: int
    request_id: str = ""


KNOWN_FIELDS = {"images", "language", "mode", "max_new_tokens", "format"}


def _describe(err: dict[str, Any], for_log: bool = False) -> str:
    """One error; `for_log`: only the service's own field names (a client's key can hold PHI or a newline)."""
    parts = [str(p) for p in err.get("loc", ()) if p != "body"]
    if for_log and parts and parts[0] not in KNOWN_FIELDS:
        parts = ["(client field)"]
    loc = ".".join(parts)[:80] or "body"
    if err.get("type") == "extra_forbidden":
        return f"unknown field '{loc}'"
    return f"field '{loc}': {err.get('msg', 'invalid')}"  # pydantic's msg names the rule, not the input


def validate_model(model: type[BaseModel], data: dict[str, Any]) -> Any:
    """Validate `data` as `model`; a ValidationError becomes ApiError(422) naming the first bad fields."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        errors = e.errors()[:3]
        raise ApiError(422, "; ".join(_describe(x) for x in errors), "; ".join(_describe(x, True) for x in errors)) from None


def parse_fields(data: dict[str, Any]) -> ReportFields:
    return validate_model(ReportFields, data)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "corrupt image or malformed body"},
    408: {"model": ErrorResponse, "description": "request body did not arrive within the body deadline"},
    401: {"model": ErrorResponse, "description": "missing or wrong bearer token (when auth is on)"},
    406: {"model": ErrorResponse, "description": "the Accept header names none of application/json, application/dicom, "
          "application/fhir+json"},
    413: {"model": ErrorResponse, "description": "body, image count, or an image's or the request's pixel count over the limit"},
    415: {"model": ErrorResponse, "description": "unsupported body or image type"},
    422: {"model": ErrorResponse, "description": "bad field (language, mode, max_new_tokens, unknown field)"},
    503: {"model": ErrorResponse, "description": "decode exceeded the server's time limit"},
}

"""The service's OpenAPI document, with the limits of the running configuration filled in.

FastAPI derives routes and the JSON response models; this adds what it cannot see: the bearer
security scheme (required when a token is configured, optional otherwise), the real constraints of
the hand-parsed request body (image count, body size as base64 length, languages, modes,
`max_new_tokens` bounds), and the `text/event-stream` answer of the stream route with its events.
Served at `/openapi.json` (and `/docs`) by the replica, built once per replica.

Usage:
    doc = service_openapi(request.app, limits, auth_on=True)
"""

from __future__ import annotations

import copy
from typing import Any

from fastapi.openapi.utils import get_openapi

from echo_ray.serve.openai_api import ChatRequest
from echo_ray.serve.schemas import ReportJSON

SECURED = ("/v1/reports", "/v1/reports/stream", "/v1/chat/completions", "/v1/models", "/v1/status")
STREAM_DOC = (
    "Server-sent events: `event: block` per finished block (`index`, `new_tokens`, `tokens`, `text`, "
    "`delta`, `finished`, `elapsed_ms`), then `event: final` (the /v1/reports body plus `blocks`), or "
    "`event: error` (`error`, `status`, `request_id`) when the decode hits the time limit."
)

FORMAT_DOC = (
    "answer format: json (default), dicom-sr (a DICOM Comprehensive SR draft, application/dicom) or fhir (a FHIR R4 "
    "DiagnosticReport, application/fhir+json); wins over the Accept header, which selects by the same media types"
)

# Before OpenAPI 3.2 (`itemSchema`), the schema of a text/event-stream describes one event.
EVENT_SCHEMA = {
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["block", "final", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": "one JSON object"},
    },
}


def _request_body(limits: Any, formats: tuple[str, ...]) -> dict[str, Any]:
    b64_max = (limits.max_body_bytes * 4) // 3 + 4
    budget = {"type": "integer", "minimum": 1, "maximum": limits.max_new_tokens}
    image_count = {"minItems": 1, "maxItems": limits.max_images}
    common = {
        "language": {"type": "string", "enum": ["en", "zh"], "default": "en"},
        "mode": {"type": "string", "enum": ["onestep", "multistep", "ar"], "default": "onestep"},
        "format": {"type": "string", "enum": list(formats), "description": FORMAT_DOC},
    }
    js = copy.deepcopy(ReportJSON.model_json_schema())
    js["properties"]["images"].update(image_count)
    js["properties"]["images"]["items"].update({"minLength": 1, "maxLength": b64_max, "contentEncoding": "base64"})
    js["properties"]["max_new_tokens"] = {"anyOf": [budget, {"type": "null"}], "default": None}
    js["properties"].update(common)
    form = {
        "type": "object",
        "required": ["images"],
        "additionalProperties": False,
        "properties": {
            "images": {"type": "array", "items": {"type": "string", "format": "binary"}, **image_count,
                       "description": f"1-{limits.max_images} image files (PNG, JPEG or DICOM); repeat the field"},
            **common,
            "max_new_tokens": budget,
        },
    }  # fmt: skip
    return {"required": True, "content": {"multipart/form-data": {"schema": form}, "application/json": {"schema": js}}}


OPENAI_ERROR = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"}, "code": {"type": ["string", "null"]},
        "param": {"type": ["string", "null"]}}}},
}  # fmt: skip
CHAT_ERRORS = {
    "400": "bad request: no image or more than the limit, an image that is not a data: URL, bad base64 or a "
    "corrupt image, temperature other than 0, a field the API does not take",
    "401": "missing or wrong bearer token (when auth is on)",
    "404": "unknown model",
    "408": "request body did not arrive within the body deadline",
    "413": "body, or an image's or the request's pixel count, over the limit",
    "415": "body not application/json, or an image type other than PNG, JPEG or DICOM",
    "429": "admission queue full; see Retry-After",
    "503": "decode exceeded the server's time limit, or its engine replica failed twice",
}
CHAT_DOC = (
    "OpenAI-compatible chat completion. The study's 1-4 images are `image_url` content parts with `data:` URLs "
    "(PNG, JPEG or DICOM; http(s) URLs are not fetched). The model was trained on one instruction per language, so "
    "the prompt is the one POST /v1/reports builds: message text and system messages do not change it, and the same "
    "images and settings give the same report on both routes. Greedy decoding: `temperature` 0 or omitted. Extra "
    "fields: `mode`, `block_size` (the served model's), `steps` (multistep), `language`. `stream`: one "
    "`chat.completion.chunk` per committed block, `finish_reason` on the last, a usage chunk with "
    "`stream_options.include_usage`, then `data: [DONE]`; a failure mid-stream is one `data: {\"error\": ...}`."
)


def _chat_operation(doc: dict[str, Any], limits: Any, model: str) -> None:
    """Request and answers of POST /v1/chat/completions (its body is parsed by hand, like /v1/reports')."""
    schema = ChatRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    doc["components"].setdefault("schemas", {}).update(schema.pop("$defs", {}))
    props = schema["properties"]
    props["model"] = {"type": "string", "enum": [model], "description": "the served model (GET /v1/models)"}
    budget = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": limits.max_new_tokens}, {"type": "null"}]}
    props["max_tokens"] = props["max_completion_tokens"] = budget
    props["temperature"] = {"anyOf": [{"type": "number", "minimum": 0, "maximum": 0}, {"type": "null"}]}
    op = doc["paths"]["/v1/chat/completions"]["post"]
    op["description"] = CHAT_DOC
    op["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
    reply = {"type": "object", "required": ["id", "object", "choices"],
             "properties": {"object": {"type": "string", "enum": ["chat.completion"]}}}  # fmt: skip
    chunk = {"type": "string", "description": "`data: <chat.completion.chunk JSON>` lines, then `data: [DONE]`"}
    op["responses"] = {
        "200": {"description": "chat.completion (JSON), or chunks when `stream` is true",
                "content": {"application/json": {"schema": reply}, "text/event-stream": {"schema": chunk}}},
        **{k: {"description": v, "content": {"application/json": {"schema": OPENAI_ERROR}}} for k, v in CHAT_ERRORS.items()},
    }  # fmt: skip
    listing = doc["paths"]["/v1/models"]["get"]
    listing["responses"]["401"] = {"description": CHAT_ERRORS["401"], "content": {"application/json": {"schema": OPENAI_ERROR}}}


def service_openapi(app: Any, limits: Any, auth_on: bool, model: str = "") -> dict[str, Any]:
    """OpenAPI 3.1 document of `app` (the served FastAPI instance) under `limits`."""
    doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    doc.setdefault("components", {}).setdefault("securitySchemes", {})["bearerAuth"] = {
        "type": "http", "scheme": "bearer",
        "description": "Required when the service has a token (serve.auth_token_file or ECHO_API_TOKEN).",
    }  # fmt: skip
    security = [{"bearerAuth": []}] if auth_on else [{"bearerAuth": []}, {}]
    for path in SECURED:
        for op in doc["paths"].get(path, {}).values():
            op["security"] = security
    doc["paths"]["/v1/reports"]["post"]["requestBody"] = _request_body(limits, ("json", "dicom-sr", "fhir"))
    doc["paths"]["/v1/reports/stream"]["post"]["requestBody"] = _request_body(limits, ("json",))
    report_ok = doc["paths"]["/v1/reports"]["post"]["responses"]["200"]
    report_ok["content"].update({"application/dicom": {"schema": {"type": "string", "format": "binary"}},
                                 "application/fhir+json": {"schema": {"type": "object"}}})  # fmt: skip
    ok = doc["paths"]["/v1/reports/stream"]["post"]["responses"]["200"]
    ok["description"] = STREAM_DOC
    ok["content"] = {"text/event-stream": {"schema": EVENT_SCHEMA}}
    _chat_operation(doc, limits, model)
    return doc

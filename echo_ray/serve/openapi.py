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

from echo_ray.serve.schemas import ReportJSON

SECURED = ("/v1/reports", "/v1/reports/stream", "/v1/models")
STREAM_DOC = (
    "Server-sent events: `event: block` per finished block (`index`, `new_tokens`, `tokens`, `text`, "
    "`delta`, `finished`, `elapsed_ms`), then `event: final` (the /v1/reports body plus `blocks`), or "
    "`event: error` (`error`, `status`, `request_id`) when the decode hits the time limit."
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


def _request_body(limits: Any) -> dict[str, Any]:
    b64_max = (limits.max_body_bytes * 4) // 3 + 4
    budget = {"type": "integer", "minimum": 1, "maximum": limits.max_new_tokens}
    image_count = {"minItems": 1, "maxItems": limits.max_images}
    common = {
        "language": {"type": "string", "enum": ["en", "zh"], "default": "en"},
        "mode": {"type": "string", "enum": ["onestep", "multistep", "ar"], "default": "onestep"},
    }
    js = copy.deepcopy(ReportJSON.model_json_schema())
    js["properties"]["images"].update(image_count)
    js["properties"]["images"]["items"].update({"maxLength": b64_max, "contentEncoding": "base64"})
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


def service_openapi(app: Any, limits: Any, auth_on: bool) -> dict[str, Any]:
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
    body = _request_body(limits)
    for path in ("/v1/reports", "/v1/reports/stream"):
        doc["paths"][path]["post"]["requestBody"] = body
    ok = doc["paths"]["/v1/reports/stream"]["post"]["responses"]["200"]
    ok["description"] = STREAM_DOC
    ok["content"] = {"text/event-stream": {"schema": EVENT_SCHEMA}}
    return doc

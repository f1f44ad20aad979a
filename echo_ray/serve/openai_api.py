"""OpenAI-compatible chat completions on the ingress: request schema, adapters, replies, chunks, errors.

`POST /v1/chat/completions` takes OpenAI's chat request with the study's 1-4 images as `image_url`
content parts holding `data:` URLs (PNG, JPEG or DICOM; http(s) URLs are refused, never fetched).
The model was trained on one instruction per language, so the prompt is the one `/v1/reports`
builds: message text and system messages do not change it, and the same images and settings give
the same report on both routes. `max_tokens` / `max_completion_tokens` set the budget,
`temperature` may only be 0 (decoding is greedy), echo_ray's knobs are extra body fields (`mode`,
`block_size` (must be the served model's), `steps`, `language`). Replies carry `usage`; a stream
sends one `chat.completion.chunk` per committed block, `finish_reason` stop (EOS) or length (budget)
on the last, a usage chunk when `stream_options.include_usage`, then ``data: [DONE]``; a failure
mid-stream is one ``data: {"error": ...}`` and the stream closes. Errors on these routes use
OpenAI's ``{"error": {"message", "type", "code", "param"}}`` shape (`error_body`).

Usage:
    chat = validate_chat(body_dict)                                  # ChatRequest or ApiError(400)
    parsed, opts = chat_upload(chat, limits, model_name, block_size)  # ParsedBody for inputs.decode_images
    completion(rid, model, report, prompt_tokens)                     # the chat.completion body
    chunk(rid, model, created, "delta text", finish_reason=None)      # one chat.completion.chunk
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from echo_ray.serve.inputs import Limits, ParsedBody, Upload, b64_image
from echo_ray.serve.schemas import ApiError, Language, Mode, ReportFields, validate_model

OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")
ERROR_TYPES = {401: "authentication_error", 404: "invalid_request_error", 429: "rate_limit_error"}
CODES = {401: "invalid_api_key", 404: "model_not_found", 408: "request_timeout", 413: "request_too_large",
         415: "unsupported_media_type", 429: "rate_limit_exceeded"}


class ImageURL(BaseModel):
    url: str = Field(..., min_length=1, description="data:image/png;base64,... (PNG, JPEG or DICOM); no http(s)")
    detail: Optional[Literal["auto", "low", "high"]] = None


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ImagePart(BaseModel):
    type: Literal["image_url"]
    image_url: ImageURL


Part = Annotated[Union[TextPart, ImagePart], Field(discriminator="type")]


class ChatMessage(BaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: Union[str, list[Part], None] = None
    name: Optional[str] = None


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat request, the subset a greedy report generator can honour, plus echo_ray's knobs."""

    model_config = ConfigDict(extra="forbid")

    model: str
    messages: list[ChatMessage] = Field(..., min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    temperature: Optional[float] = Field(None, description="only 0: decoding is greedy")
    n: Optional[int] = Field(None, ge=1, le=1)
    user: Optional[str] = None
    mode: Mode = "onestep"
    block_size: Optional[int] = Field(None, ge=1, description="must equal the served model's block size")
    steps: Optional[int] = Field(None, ge=1, description="multistep: steps per block (1..block size)")
    language: Language = "en"


@dataclass
class ChatOptions:
    """What the chat request asks beyond a /v1/reports request."""

    stream: bool
    include_usage: bool
    steps: Optional[int]


def validate_chat(data: Any) -> ChatRequest:
    if not isinstance(data, dict):
        raise ApiError(400, "request body must be a JSON object (an OpenAI chat completion request)")
    try:
        return validate_model(ChatRequest, data)
    except ApiError as e:  # OpenAI answers a malformed request with 400
        raise ApiError(400, e.message, e.log_message) from None


def _images(chat: ChatRequest) -> list[ImagePart]:
    return [p for m in chat.messages if isinstance(m.content, list) for p in m.content if isinstance(p, ImagePart)]


def _budget(chat: ChatRequest, limits: Limits) -> Optional[int]:
    a, b = chat.max_completion_tokens, chat.max_tokens
    if a is not None and b is not None and a != b:
        raise ApiError(400, f"max_completion_tokens {a} and max_tokens {b} disagree; send one of them")
    budget = a if a is not None else b
    if budget is not None and budget > limits.max_new_tokens:
        raise ApiError(400, f"max_tokens {budget} exceeds the limit of {limits.max_new_tokens}")
    return budget


def _check_settings(chat: ChatRequest, model_name: str, block_size: Optional[int]) -> None:
    if chat.model != model_name:
        raise ApiError(404, f"model {chat.model[:80]!r} does not exist; this server serves {model_name!r}",
                       "unknown model")  # fmt: skip
    if chat.temperature not in (None, 0):
        raise ApiError(400, f"temperature {chat.temperature:g} is not supported: decoding is greedy; send 0 or omit it")
    if chat.block_size is not None and chat.mode != "ar" and chat.block_size != block_size:
        raise ApiError(400, f"block_size {chat.block_size} differs from the served model's block size {block_size}")


def chat_upload(chat: ChatRequest, limits: Limits, model_name: str, block_size: Optional[int],
                n_bytes: int) -> tuple[ParsedBody, ChatOptions]:  # fmt: skip
    """The chat request as a parsed /v1/reports request (images not yet decoded), or ApiError(400/404)."""
    _check_settings(chat, model_name, block_size)
    parts = _images(chat)
    if not parts:
        raise ApiError(400, "no image: send 1-4 image_url content parts with data: URLs (PNG, JPEG or DICOM)")
    if len(parts) > limits.max_images:
        raise ApiError(400, f"{len(parts)} images exceed the limit of {limits.max_images} per request")
    uploads = []
    for i, part in enumerate(parts):
        url = part.image_url.url
        if not url.startswith("data:"):
            raise ApiError(400, f"image #{i}: only data: URLs are accepted (data:image/png;base64,...); "
                                "http(s) URLs are not fetched")  # fmt: skip
        data, declared = b64_image(url, i)
        uploads.append(Upload(data, declared, ""))
    fields = ReportFields(language=chat.language, mode=chat.mode, max_new_tokens=_budget(chat, limits))
    include = bool(chat.stream_options and chat.stream_options.include_usage)
    return ParsedBody(uploads, fields, n_bytes), ChatOptions(chat.stream, include, chat.steps)


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def finish_reason(hit_max: bool) -> str:
    return "length" if hit_max else "stop"


def completion(rid: str, model: str, text: str, hit_max: bool, prompt_tokens: int, completion_tokens: int) -> dict:
    """The `chat.completion` body of a plain reply (usage always present)."""
    return {
        "id": f"chatcmpl-{rid}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                     "finish_reason": finish_reason(hit_max)}],
        "usage": usage(prompt_tokens, completion_tokens),
    }  # fmt: skip


def chunk(rid: str, model: str, created: int, delta: dict, finish: Optional[str], with_usage: bool) -> bytes:
    """One streamed `chat.completion.chunk` as an SSE data line."""
    body: dict[str, Any] = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": created,
                            "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                         "finish_reason": finish}]}  # fmt: skip
    if with_usage:
        body["usage"] = None
    return sse_data(body)


def usage_chunk(rid: str, model: str, created: int, prompt_tokens: int, completion_tokens: int) -> bytes:
    body = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [], "usage": usage(prompt_tokens, completion_tokens)}  # fmt: skip
    return sse_data(body)


def sse_data(body: dict) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode("utf-8")


DONE = b"data: [DONE]\n\n"


def stable_delta(text: str, sent: str) -> str:
    """New text safe to send: a trailing partial character (U+FFFD while its bytes are split across
    blocks) and trailing whitespace (stripped if the report ends there) are held back until a later
    block settles them, so the deltas concatenate to exactly the report text."""
    ready = text.rstrip("\ufffd").rstrip()
    return ready[len(sent) :] if ready.startswith(sent) else ""


def error_body(status: int, message: str, code: Optional[str] = None) -> dict:
    """OpenAI's error shape."""
    kind = ERROR_TYPES.get(status) or ("server_error" if status >= 500 else "invalid_request_error")
    if code is None:
        code = CODES.get(status, "server_error" if status >= 500 else "invalid_request")
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def models_list(model: str, created: int, block_size: Optional[int]) -> dict:
    """GET /v1/models in OpenAI's list shape (plus the block size, which clients such as the PACS loop record)."""
    entry = {"id": model, "object": "model", "created": created, "owned_by": "echo_ray", "block_size": block_size}
    return {"object": "list", "data": [entry]}

"""Turn one HTTP report request (multipart upload or JSON with base64 images) into decoder input.

Limits are checked before work that scales with them: the declared Content-Length and then the
bytes actually read (413) within the body deadline (408), field types and the image count (422),
each image's and the request's pixel counts read from the headers before any pixel is decoded
(413). Large images are reduced while or right after decoding to the model processor's size. The image type is judged from the bytes, not only the declared type: PNG,
JPEG and DICOM are accepted; another image format or a non-image declared type is 415; bytes that
claim to be an image but do not decode are 400. Field errors are 422 (see `schemas.py`).

Usage:
    body = await read_body(request.stream(), request.headers.get("content-length"), limits.max_body_bytes, 10.0)
    parsed = await parse_body(request.headers, body, limits)        # fields and counts checked (ApiError)
    pixels = inspect_images(parsed, limits)                         # headers only; 400/413/415 per image
    req = decode_images(parsed, limits)                             # ReportRequest
    req.images, req.fields.language, req.n_bytes
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from PIL import Image
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from echo_ray.data.image_header import image_size
from echo_ray.data.images import image_from_bytes, is_dicom
from echo_ray.errors import InputError
from echo_ray.serve.schemas import ApiError, ReportFields, ReportJSON, parse_fields, validate_model

ACCEPTED_TYPES = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "application/dicom": "dicom"}
GENERIC_TYPES = {"", "application/octet-stream"}  # browsers send these for .dcm files; judged by bytes
FORM_FIELDS = {"language", "mode", "max_new_tokens", "format"}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int
    max_images: int
    max_pixels: int
    max_new_tokens: int
    max_request_pixels: int = 1 << 62
    target_pixels: int | None = None  # decode large images down to about this size (the processor's)


@dataclass
class Upload:
    data: bytes
    declared_type: str
    filename: str  # shown to the caller in errors, never logged


@dataclass
class ParsedBody:
    """A request with checked fields and image count; images not yet decoded."""

    uploads: list[Upload]
    fields: ReportFields
    n_bytes: int


@dataclass
class ReportRequest:
    images: list[Image.Image]
    fields: ReportFields
    n_bytes: int  # request body size, for logs (never the content)
    dicom: list[bytes] = field(default_factory=list)  # the uploaded DICOM files as sent (DICOM SR / FHIR outputs)


async def read_body(stream: AsyncIterator[bytes], content_length: str | None, limit: int,
                    timeout_s: float | None = None) -> bytes:  # fmt: skip
    """Read the body within `timeout_s` (else 408; None = no deadline), refusing (413) once it is known to exceed `limit` bytes.

    Behind `body_guard.BodyGuard` the body is already in memory; without it this deadline still
    frees the replica slot a stalled client holds.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise ApiError(400, "Content-Length header is not a number") from None
        if declared > limit:
            raise ApiError(413, f"request body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            async for chunk in stream:
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"request body did not arrive within {timeout_s:.1f} s") from None
    return b"".join(chunks)


def sniff(data: bytes) -> str | None:
    """'png' | 'jpeg' | 'dicom' from the magic bytes, else None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    return "dicom" if is_dicom(data) else None


def _other_format(data: bytes) -> str | None:
    """Name of a format Pillow recognizes (GIF, BMP, ...) for bytes that are none of ours."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.format
    except Exception:
        return None


def _fail(status: int, index: int, filename: str, what: str, log_what: str | None = None) -> ApiError:
    """The client sees the file name; the log line sees only the index (file names can hold PHI)."""
    label = f"#{index} ({filename})" if filename else f"#{index}"
    return ApiError(status, f"image {label} {what}", f"image #{index} {log_what or what}")


def check_header(data: bytes, declared_type: str | None, index: int, filename: str, max_pixels: int) -> int:
    """Type and pixel count of image #`index` from its header, nothing decoded: ApiError 415/413/400."""
    declared = (declared_type or "").split(";")[0].strip().lower()
    if declared not in ACCEPTED_TYPES and declared not in GENERIC_TYPES:
        raise _fail(415, index, filename, f"has unsupported content type {declared[:60]!r}; send PNG, JPEG or DICOM",
                    "has an unsupported content type; send PNG, JPEG or DICOM")  # fmt: skip
    if not data:
        raise _fail(400, index, filename, "is empty")
    kind = sniff(data)
    if kind is None:
        other = _other_format(data)
        if other:
            raise _fail(415, index, filename, f"is {other}; send PNG, JPEG or DICOM")
        raise _fail(400, index, filename, "is not a readable PNG, JPEG or DICOM file")
    size = image_size(data, kind)
    if size is None:
        raise _fail(400, index, filename, f"has an unreadable {kind.upper()} header")
    pixels = size[0] * size[1]
    if pixels > max_pixels:
        raise _fail(413, index, filename, f"has {pixels} pixels, over the limit of {max_pixels}")
    return pixels


def check_image(data: bytes, declared_type: str | None, index: int, filename: str, max_pixels: int,
                target_pixels: int | None = None) -> Image.Image:  # fmt: skip
    """Validate (`check_header`) and decode image #`index`; ApiError 415 (type), 413 (pixels) or 400 (corrupt)."""
    check_header(data, declared_type, index, filename, max_pixels)
    try:
        return image_from_bytes(data, name=f"#{index}", max_pixels=max_pixels, target_pixels=target_pixels)
    except InputError as e:  # e names the image by index only
        raise _fail(400, index, filename, f"could not be decoded ({e})") from None


def _check_count(n: int, limits: Limits) -> None:
    if n == 0:
        raise ApiError(422, "field 'images': at least one image is required")
    if n > limits.max_images:
        # 422 like any other field rule: the OpenAPI document declares maxItems (a validation error)
        raise ApiError(422, f"field 'images': {n} images exceed the limit of {limits.max_images} per request")


def _check_budget(fields: ReportFields, limits: Limits) -> ReportFields:
    if fields.max_new_tokens is not None and fields.max_new_tokens > limits.max_new_tokens:
        raise ApiError(422, f"field 'max_new_tokens': {fields.max_new_tokens} exceeds the limit of {limits.max_new_tokens}")
    return fields


async def _parse_multipart(headers: Headers, body: bytes, limits: Limits) -> ParsedBody:
    async def once() -> AsyncIterator[bytes]:
        yield body
        yield b""

    parser = MultiPartParser(headers, once(), max_files=1000, max_fields=1000, max_part_size=64 * 1024)
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise ApiError(400, f"malformed multipart body: {e.message}") from None
    uploads: list[UploadFile] = []
    values: dict[str, Any] = {}
    try:
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                uploads.append(value)
            elif key in FORM_FIELDS:
                values[key] = value
            elif key != "images":
                expected = f"expected images, {', '.join(sorted(FORM_FIELDS))}"
                raise ApiError(422, f"unknown field '{key[:60]}' ({expected})", f"unknown field ({expected})")
        fields = _check_budget(parse_fields(values), limits)
        _check_count(len(uploads), limits)
        files = [Upload(await u.read(), u.content_type or "", u.filename or "") for u in uploads]
    finally:
        await form.close()
    return ParsedBody(files, fields, len(body))


def b64_image(item: str, index: int) -> tuple[bytes, str]:
    """Decode one base64 string or data URL -> (bytes, declared content type)."""
    declared = ""
    if item.startswith("data:"):
        head, _, item = item.partition(",")
        declared = head[5:].split(";")[0]
    try:
        return base64.b64decode(item, validate=True), declared
    except (binascii.Error, ValueError):
        raise ApiError(400, f"image #{index} is not valid base64") from None


def _parse_json(body: bytes, limits: Limits) -> ParsedBody:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON ({e.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise ApiError(422, "JSON body must be an object with 'images' and optional fields")
    req = validate_model(ReportJSON, data)  # types first: a wrong-typed field is 422 whatever the count
    _check_count(len(req.images), limits)
    fields = _check_budget(ReportFields(language=req.language, mode=req.mode, max_new_tokens=req.max_new_tokens,
                                        format=req.format), limits)
    uploads = [Upload(*b64_image(item, i), filename="") for i, item in enumerate(req.images)]
    return ParsedBody(uploads, fields, len(body))


async def parse_body(headers: Headers, body: bytes, limits: Limits) -> ParsedBody:
    """Dispatch on Content-Type: multipart/form-data or application/json; anything else is 415."""
    ctype = headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        return await _parse_multipart(headers, body, limits)
    if ctype == "application/json":
        return _parse_json(body, limits)
    send = "send multipart/form-data or application/json"
    raise ApiError(415, f"request content type {ctype[:60] or '(none)'!r} is not supported; {send}",
                   f"request content type is not supported; {send}")  # fmt: skip


def inspect_images(parsed: ParsedBody, limits: Limits) -> int:
    """Check every image's header (type, pixels) and the request's pixel total; returns the total."""
    total = sum(check_header(u.data, u.declared_type, i, u.filename, limits.max_pixels)
                for i, u in enumerate(parsed.uploads))  # fmt: skip
    if total > limits.max_request_pixels:
        raise ApiError(413, f"the request's images have {total} pixels together, over the limit of {limits.max_request_pixels}")
    return total


def decode_images(parsed: ParsedBody, limits: Limits) -> ReportRequest:
    """Check and decode every upload (CPU work: the service runs this off the event loop).

    Each upload's bytes are dropped once decoded, so at most one full-size image lives at a time;
    DICOM files are kept as sent (`ReportRequest.dicom`, compressed pixel data: small next to pixels).
    """
    inspect_images(parsed, limits)
    images, dicom = [], []
    for i, u in enumerate(parsed.uploads):
        images.append(check_image(u.data, u.declared_type, i, u.filename, limits.max_pixels, limits.target_pixels))
        if sniff(u.data) == "dicom":  # kept: the study's own files (a DICOM SR answer refers to them)
            dicom.append(u.data)
        u.data = b""
    return ReportRequest(images, parsed.fields, parsed.n_bytes, dicom)

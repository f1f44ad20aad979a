"""Request parsing, the row factory and SSE framing of the report service, without Ray."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from serve_support import MAX_NEW_TOKENS, local_generator, phantom_pngs, tiny_checkpoint
from starlette.datastructures import Headers

from echo_ray.serve.inputs import Limits, check_image, decode_images, parse_body, read_body, sniff
from echo_ray.serve.schemas import ApiError
from echo_ray.serve.sse import parse_sse, sse_event

LIMITS = Limits(max_body_bytes=10_000, max_images=4, max_pixels=10_000, max_new_tokens=64)


async def _chunks(parts: list[bytes]):
    for p in parts:
        yield p


def _status(fn, *args) -> int:
    with pytest.raises(ApiError) as e:
        result = fn(*args)
        if asyncio.iscoroutine(result):
            asyncio.run(result)
    return e.value.status


def _png(size=(50, 50), fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("L", size).save(buf, format=fmt)
    return buf.getvalue()


def test_read_body_enforces_limit_with_and_without_content_length():
    assert asyncio.run(read_body(_chunks([b"ab", b"cd"]), "4", 4)) == b"abcd"
    assert _status(read_body, _chunks([b"x"]), "99999", 10) == 413  # refused before reading
    assert _status(read_body, _chunks([b"x" * 6, b"x" * 6]), None, 10) == 413  # chunked upload
    assert _status(read_body, _chunks([b""]), "ten", 10) == 400


def test_check_image_types_sizes_and_log_message_without_filename():
    assert sniff(_png()) == "png" and sniff(_png(fmt="JPEG")) == "jpeg" and sniff(b"GIF89a") is None
    assert check_image(_png(), "image/png", 0, "a.png", 10_000).mode == "RGB"
    assert check_image(_png(fmt="JPEG"), "", 0, "", 10_000).size == (50, 50)
    assert _status(check_image, _png(fmt="GIF"), "image/png", 0, "a.gif", 10_000) == 415
    assert _status(check_image, _png(), "image/webp", 0, "a.webp", 10_000) == 415
    assert _status(check_image, _png((200, 200)), "image/png", 0, "big.png", 10_000) == 413
    assert _status(check_image, b"", "image/png", 0, "e.png", 10_000) == 400
    with pytest.raises(ApiError) as e:
        check_image(_png()[:30], "image/png", 2, "Doe_John.png", 10_000)
    assert e.value.status == 400 and "Doe_John.png" in e.value.message and "Doe_John" not in e.value.log_message


async def parse_report_request(headers: Headers, body: bytes, limits: Limits):
    return decode_images(await parse_body(headers, body, limits), limits)  # as the service does, in one thread


def test_parse_json_and_form_fields():
    import base64
    import json

    body = json.dumps({"images": [base64.b64encode(_png()).decode()], "mode": "ar", "language": "zh"}).encode()
    req = asyncio.run(parse_report_request(Headers({"content-type": "application/json"}), body, LIMITS))
    assert (req.fields.mode, req.fields.language, len(req.images), req.n_bytes) == ("ar", "zh", 1, len(body))
    bad = json.dumps({"images": [base64.b64encode(_png()).decode()], "max_new_tokens": 65}).encode()
    assert _status(parse_report_request, Headers({"content-type": "application/json"}), bad, LIMITS) == 422
    many = json.dumps({"images": ["AAAA"] * 5}).encode()
    assert _status(parse_report_request, Headers({"content-type": "application/json"}), many, LIMITS) == 422
    assert _status(parse_report_request, Headers({"content-type": "application/json"}), b"[1]", LIMITS) == 422


def test_row_factory_builds_the_generators_rows_and_refuses_what_cannot_fit():
    """The ingress's rows (RowFactory from a weightless ModelSide) equal the local decoder's prompts."""
    import torch

    from echo_ray.decode.rows import ModelSide, RowFactory
    from echo_ray.errors import InputError

    gen = local_generator()
    rows = RowFactory(ModelSide.load(str(tiny_checkpoint())), gen.cfg, gen.prompt_cfg)
    img = [Image.open(phantom_pngs()[0]).convert("RGB")]
    row = rows.row(img, "zh", "multistep", MAX_NEW_TOKENS, steps=4, tag="r")
    (ref,) = gen.prompts([img], "zh")
    assert torch.equal(row.prompt.input_ids, ref.input_ids) and torch.equal(row.prompt.pixel_values, ref.pixel_values)
    assert (row.mode.kind, row.mode.steps, row.max_new_tokens, row.tag) == ("multistep", 4, MAX_NEW_TOKENS, "r")
    limit = min(gen.max_context, gen.cfg.slots.max_len)
    with pytest.raises(InputError, match="context"):
        rows.row(img * 4, "en", "onestep", limit)
    with pytest.raises(InputError, match="steps"):
        rows.row(img, "en", "onestep", 8, steps=3)  # one-step decoding has no steps to choose


def test_sse_roundtrip():
    body = (sse_event("block", {"index": 0, "text": "所见：a"}) + sse_event("final", {"text": "x\ny"})).decode()
    assert parse_sse(body) == [("block", {"index": 0, "text": "所见：a"}), ("final", {"text": "x\ny"})]

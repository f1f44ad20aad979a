"""Request parsing, batch decoding and SSE framing of the report service, without Ray."""

from __future__ import annotations

import asyncio
import io
import time

import pytest
from PIL import Image
from serve_support import MAX_NEW_TOKENS, local_generator, phantom_pngs
from starlette.datastructures import Headers

from echo_ray.serve.batching import BatchStats, DecodeJob, decode_jobs, group_jobs
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
    assert _status(parse_report_request, Headers({"content-type": "application/json"}), many, LIMITS) == 413
    assert _status(parse_report_request, Headers({"content-type": "application/json"}), b"[1]", LIMITS) == 422


def _job(path_index: int, mode: str = "onestep", deadline: float | None = None, n_images: int = 1) -> DecodeJob:
    img = Image.open(phantom_pngs()[path_index]).convert("RGB")
    return DecodeJob([img] * n_images, "en", mode, MAX_NEW_TOKENS, deadline or time.monotonic() + 60)


def test_decode_jobs_groups_by_key_and_keeps_caller_order():
    gen = local_generator()
    jobs = [_job(0), _job(1, mode="ar"), _job(2), _job(3)]
    assert [sorted(v) for v in group_jobs(jobs).values()] == [[0, 2, 3], [1]]
    outcomes = decode_jobs(gen, jobs, timeout_s=60)
    for job, out in zip(jobs, outcomes):
        ref = gen.generate([job.images], "en", mode=job.mode)[0]
        assert out.error is None and out.report.tokens == ref.tokens
    assert [o.batch_size for o in outcomes] == [3, 1, 3, 3]
    stats = BatchStats()
    stats.record(len(jobs), [len(v) for v in group_jobs(jobs).values()])
    assert stats.as_dict()["max_batch_size_seen"] == 4 and stats.as_dict()["decoder_call_sizes"] == {"1": 1, "3": 1}


def test_deadline_gives_503_and_a_bad_row_does_not_sink_its_batch():
    gen = local_generator()
    late = _job(0, deadline=time.monotonic() - 1)
    assert decode_jobs(gen, [late], timeout_s=0.5)[0].error.status == 503
    # Same key, but the 4-image prompt plus this budget overflows the model context: only that row fails.
    limit = min(gen.max_context, gen.cfg.slots.max_len)  # the engine's slots are the tighter bound
    budget = limit - gen.prompts([late.images * 4], "en")[0].length + 1
    ok = DecodeJob(late.images, "en", "onestep", budget, time.monotonic() - 1)
    too_long = DecodeJob(late.images * 4, "en", "onestep", budget, time.monotonic() + 60)
    outs = decode_jobs(gen, [ok, too_long], timeout_s=0.5)
    assert outs[0].error.status == 503  # it was decoded (then stopped by its deadline), not refused
    assert outs[1].error.status == 422 and "context" in outs[1].error.message


def test_sse_roundtrip():
    body = (sse_event("block", {"index": 0, "text": "所见：a"}) + sse_event("final", {"text": "x\ny"})).decode()
    assert parse_sse(body) == [("block", {"index": 0, "text": "所见：a"}), ("final", {"text": "x\ny"})]

"""The report service (ingress + engine deployments) over HTTP on local Ray: reports, streaming, continuous
batching, back-pressure, bad input."""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
import requests
from conftest import shared_path
from PIL import Image
from serve_support import API_APP, API_ARGS, MAX_NEW_TOKENS, local_generator, phantom_pngs, start_app

from echo_ray.serve.sse import parse_sse

pytestmark = pytest.mark.timeout(300)

LIMITS = API_ARGS
FIELDS = ("findings", "impression", "text", "language", "model", "mode", "tokens", "forward_passes", "latency_ms")


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


def nih_pngs() -> list[bytes]:
    return [shared_path("cxr_images_nih", n).read_bytes() for n in ("00000001_000.png", "00027426_000.png")]


def post(url: str, images: list[bytes], route: str = "/v1/reports", types=None, **fields) -> requests.Response:
    types = types or ["image/png"] * len(images)
    files = [("images", (f"img{i}.png", data, t)) for i, (data, t) in enumerate(zip(images, types))]
    return requests.post(url + route, files=files, data={k: str(v) for k, v in fields.items()}, timeout=60)


def expected(images: list[bytes], **overrides):
    """Single-row in-process decode of the same study: what the service must answer."""
    study = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    language = overrides.pop("language", "en")
    return local_generator().generate([study], language, **overrides)[0]


def png_bytes(size: tuple[int, int], fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.new("L", size, 40).save(buf, format=fmt)
    return buf.getvalue()


def dicom_bytes() -> bytes:
    """A small synthetic DICOM (a gradient; no patient data)."""
    import numpy as np
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid
    from pydicom import Dataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = SecondaryCaptureImageStorage, generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    arr = (np.add.outer(np.arange(64), np.arange(64)) * 16).astype(np.uint16)
    ds.Rows, ds.Columns = arr.shape
    ds.PhotometricInterpretation, ds.SamplesPerPixel = "MONOCHROME2", 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = arr.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_nih_and_phantom_reports_match_local_decode(url):
    for data in [*nih_pngs(), phantom_pngs()[0].read_bytes()]:
        r = post(url, [data])
        assert r.status_code == 200, r.text
        body = r.json()
        assert all(k in body for k in FIELDS)
        ref = expected([data])
        assert (body["text"], body["findings"], body["impression"]) == (ref.text, ref.findings, ref.impression)
        assert body["tokens"] == len(ref.tokens) == MAX_NEW_TOKENS  # the random model never emits EOS
        assert body["model"] == "echo_tiny" and body["mode"] == "onestep" and body["language"] == "en"
        assert body["latency_ms"] > 0 and body["forward_passes"] >= 2


def test_json_base64_two_images_zh_and_modes(url):
    a, b = (p.read_bytes() for p in phantom_pngs()[:2])
    payload = {"images": [base64.b64encode(a).decode(), "data:image/png;base64," + base64.b64encode(b).decode()],
               "language": "zh", "max_new_tokens": 16}  # fmt: skip
    r = requests.post(url + "/v1/reports", json=payload, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["text"] == expected([a, b], language="zh", max_new_tokens=16).text
    passes = {}
    for mode in ("onestep", "multistep", "ar"):
        body = post(url, [a], mode=mode, max_new_tokens=16).json()
        assert body["mode"] == mode and body["text"] == expected([a], mode=mode, max_new_tokens=16).text
        passes[mode] = body["forward_passes"]
    assert passes["onestep"] < passes["multistep"] and passes["onestep"] < passes["ar"]


def test_dicom_and_jpeg_are_accepted(url):
    assert post(url, [dicom_bytes()], types=["application/dicom"]).status_code == 200
    assert post(url, [dicom_bytes()], types=["application/octet-stream"]).status_code == 200
    assert post(url, [png_bytes((300, 300), "JPEG")], types=["image/jpeg"]).status_code == 200


def test_stream_one_event_per_block_then_final(url):
    data = nih_pngs()[0]
    r = post(url, [data], route="/v1/reports/stream")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    names = [n for n, _ in events]
    study = [Image.open(io.BytesIO(data)).convert("RGB")]
    run = local_generator().stream([study], "en")
    ref_blocks = list(run)
    assert names == ["block"] * len(ref_blocks) + ["final"]
    assert [d["index"] for n, d in events if n == "block"] == [ev.index for ev in ref_blocks]
    assert [d["new_tokens"] for n, d in events if n == "block"] == [len(ev.tokens[0]) for ev in ref_blocks]
    final = events[-1][1]
    assert final["text"] == run.reports[0].text == events[-2][1]["text"]
    assert final["blocks"] == len(ref_blocks) and all(k in final for k in FIELDS)


def _together(calls) -> list:
    """Run the zero-argument callables at once (a barrier lines them up); their results in order."""
    results: list = [None] * len(calls)
    barrier = threading.Barrier(len(calls))

    def run(i: int) -> None:
        barrier.wait()
        results[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return results


def _rows_per_step(url: str) -> dict[int, int]:
    return {int(k): v for k, v in requests.get(url + "/v1/status", timeout=30).json()["batching"]["rows_per_step"].items()}


def test_concurrent_clients_with_own_budgets_and_languages_share_steps(url):
    images = [p.read_bytes() for p in phantom_pngs()] + nih_pngs()
    asks = [dict(language=("zh" if i % 3 == 1 else "en"), max_new_tokens=8 * (1 + i % 4)) for i in range(len(images))]
    refs = [expected([b], **dict(a)) for b, a in zip(images, asks)]
    assert len({r.text for r in refs}) > 1, "images must decode differently for the check to mean anything"
    before = _rows_per_step(url)
    results = _together([lambda b=b, a=a: post(url, [b], **a) for b, a in zip(images, asks)])
    for r, ref, a in zip(results, refs, asks):
        assert r is not None and r.status_code == 200, r and r.text
        assert r.json()["text"] == ref.text and r.json()["tokens"] == len(ref.tokens) == a["max_new_tokens"]
        assert r.json()["language"] == a["language"]
    new = {k: v - before.get(k, 0) for k, v in _rows_per_step(url).items() if v - before.get(k, 0) > 0}
    assert max(new) > 1, f"no step with more than one row observed: {new}"
    assert max(r.json()["batch_size"] for r in results) > 1


def test_a_stream_shares_steps_with_plain_requests_and_keeps_its_blocks(url):
    data, budget = nih_pngs()[1], 512  # 64 blocks: long enough for plain requests to join mid-stream
    others = [p.read_bytes() for p in phantom_pngs()[:5]]
    refs = [expected([b], max_new_tokens=16).text for b in others]
    run = local_generator().stream([[Image.open(io.BytesIO(data)).convert("RGB")]], "en", max_new_tokens=budget)
    ref_blocks = list(run)
    files = [("images", ("s.png", data, "image/png"))]
    with requests.post(url + "/v1/reports/stream", files=files, data={"max_new_tokens": str(budget)},
                       stream=True, timeout=120) as stream:  # fmt: skip
        lines = stream.iter_lines(decode_unicode=True)
        head = [next(lines), next(lines)]  # the first block event arrived: the stream is decoding
        plain = _together([lambda b=b: post(url, [b], max_new_tokens=16) for b in others])
        body = "\n".join(head + list(lines))
    assert all(r.status_code == 200 for r in plain)
    assert [r.json()["text"] for r in plain] == refs
    events = parse_sse(body)  # iter_lines yields the blank separator lines too
    assert [d["new_tokens"] for n, d in events if n == "block"] == [len(ev.tokens[0]) for ev in ref_blocks]
    assert [d["index"] for n, d in events if n == "block"] == [ev.index for ev in ref_blocks]
    final = events[-1][1]
    assert events[-1][0] == "final" and final["text"] == run.reports[0].text
    assert final["batch_size"] > 1, "the stream decoded alone: no plain request shared its steps"
    assert max(r.json()["batch_size"] for r in plain) > 1


def _bad_cases():
    png = png_bytes((64, 64))
    gif = png_bytes((64, 64), "GIF")
    big = png_bytes((1000, 1000))  # 1e6 pixels > max_pixels 600_000, yet a small file
    return [
        ("corrupt png", dict(files=[("images", ("a.png", png[:40] + b"\0" * 60, "image/png"))]), 400),
        ("garbage bytes", dict(files=[("images", ("a.png", b"not an image at all", "image/png"))]), 400),
        ("corrupt dicom", dict(files=[("images", ("a.dcm", b"\0" * 128 + b"DICM" + b"\x02" * 50, "application/dicom"))]), 400),
        ("bad base64", dict(json={"images": ["@@@not-base64@@@"]}), 400),
        ("malformed json", dict(data=b"{nope", headers={"content-type": "application/json"}), 400),
        ("body too large", dict(files=[("images", ("a.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 1_100_000, "image/png"))]), 413),
        ("too many images", dict(files=[("images", (f"{i}.png", png, "image/png")) for i in range(5)]), 422),
        ("too many pixels", dict(files=[("images", ("big.png", big, "image/png"))]), 413),
        ("gif image", dict(files=[("images", ("a.gif", gif, "image/gif"))]), 415),
        ("gif bytes as octet-stream", dict(files=[("images", ("a.bin", gif, "application/octet-stream"))]), 415),
        ("text part", dict(files=[("images", ("a.txt", b"hello", "text/plain"))]), 415),
        ("text body", dict(data=b"hello", headers={"content-type": "text/plain"}), 415),
        ("bad language", dict(files=[("images", ("a.png", png, "image/png"))], data={"language": "fr"}), 422),
        ("bad mode", dict(files=[("images", ("a.png", png, "image/png"))], data={"mode": "fast"}), 422),
        ("zero tokens", dict(files=[("images", ("a.png", png, "image/png"))], data={"max_new_tokens": "0"}), 422),
        ("text tokens", dict(files=[("images", ("a.png", png, "image/png"))], data={"max_new_tokens": "many"}), 422),
        ("tokens over limit", dict(json={"images": [base64.b64encode(png).decode()], "max_new_tokens": 513}), 422),
        ("no images", dict(files=[("language", (None, "en"))]), 422),
        ("unknown json field", dict(json={"images": [base64.b64encode(png).decode()], "temperature": 1}), 422),
    ]


@pytest.mark.parametrize("name,kwargs,status", _bad_cases(), ids=[c[0] for c in _bad_cases()])
def test_bad_input_gets_its_status_and_service_keeps_serving(url, name, kwargs, status):
    for route in ("/v1/reports", "/v1/reports/stream"):
        r = requests.post(url + route, timeout=60, **kwargs)
        assert r.status_code == status, f"{name} {route}: {r.status_code} {r.text[:300]}"
        body = r.json()
        assert body["status"] == status and body["error"] and body["request_id"]
    good = post(url, [phantom_pngs()[0].read_bytes()], max_new_tokens=8)
    assert good.status_code == 200, good.text


def test_health_ready_models_openapi_and_no_auth(url):
    """Auth off (no token configured): every route answers without a header. Auth on: test_serve_cli."""
    assert requests.get(url + "/healthz", timeout=30).json() == {"status": "ok"}
    ready = requests.get(url + "/readyz", timeout=30)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    models = requests.get(url + "/v1/models", timeout=30).json()  # OpenAI's list shape
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == ["echo_tiny"]
    status = requests.get(url + "/v1/status", timeout=30).json()  # our figures
    assert status["model"]["block_size"] == 8 and status["model"]["limits"]["max_pixels"] == LIMITS["max_pixels"]
    assert status["batching"]["slots"] >= 1 and status["replica"]
    spec = requests.get(url + "/openapi.json", timeout=30).json()
    body = spec["paths"]["/v1/reports"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json"} <= set(body)


def test_logs_carry_request_ids_and_timings_but_no_report_text_or_file_names(url, ray_cluster):
    import time
    from pathlib import Path

    from ray._private.worker import _global_node  # test-only: this session's log directory

    good = post(url, [phantom_pngs()[0].read_bytes()])
    text, rid = good.json()["text"], good.headers["x-request-id"]
    bad = requests.post(url + "/v1/reports", files=[("images", ("Doe_Jane_MRN4711.png", b"junk", "image/png"))], timeout=60)
    assert bad.status_code == 400 and "Doe_Jane_MRN4711.png" in bad.json()["error"]  # the caller is told
    logs = Path(_global_node.get_session_dir_path()) / "logs" / "serve"
    content = ""
    for _ in range(40):  # the replica's file handler may lag the response slightly
        content = "".join(p.read_text(errors="replace") for p in logs.glob(f"replica_{API_APP}_*.log"))
        if f"request_id={rid}" in content and bad.headers["x-request-id"] in content:
            break
        time.sleep(0.25)
    assert f"request_id={rid}" in content and "latency_ms=" in content
    assert len(text) >= 8 and text not in content
    assert "Doe_Jane" not in content


BUSY_APP = "echo_busy"  # two slots and one queue place: easy to fill
BUSY_ARGS = dict(max_queue=1, max_new_tokens_limit=1400, decode={"max_new_tokens": 8, "slots": {"max_rows": 2}})


@pytest.fixture(scope="module")
def busy_url(ray_cluster):
    return start_app(BUSY_APP, **BUSY_ARGS)


def _batching(url: str) -> dict:
    return requests.get(url + "/v1/status", timeout=30).json()["batching"]


def _wait_for(check, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _long_stream(url: str, png: bytes) -> tuple[requests.Response, object]:
    """An AR stream of 1200 tokens (one per step): it holds its slot until the client leaves.

    The line iterator is returned too: dropping it would close the connection (a disconnect).
    """
    r = requests.post(url + "/v1/reports/stream", files=[("images", ("a.png", png, "image/png"))],
                      data={"mode": "ar", "max_new_tokens": "1200"}, stream=True, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    lines = r.iter_lines(decode_unicode=True)
    assert next(lines) == "event: block" and next(lines).startswith("data:")  # decoding now
    return r, lines


def test_disconnect_frees_the_slot_and_a_full_queue_answers_429(busy_url):
    png = phantom_pngs()[0].read_bytes()
    base = _batching(busy_url)
    assert base["slots"] == 2 and base["max_queue"] == 1
    (a, _a_lines), (b, _b_lines) = _long_stream(busy_url, png), _long_stream(busy_url, png)
    assert _batching(busy_url)["slots_in_use"] == 2
    queued: list[requests.Response] = []
    waiter = threading.Thread(target=lambda: queued.append(post(busy_url, [png], max_new_tokens=8)))
    waiter.start()
    _wait_for(lambda: _batching(busy_url)["queue_length"] == 1, "the third request to queue")
    for route in ("/v1/reports", "/v1/reports/stream"):
        refused = post(busy_url, [png], route=route, max_new_tokens=8)
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        body = refused.json()
        assert body["status"] == 429 and "busy" in body["error"] and body["request_id"]
    chat = {"model": "echo_tiny", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}]}]}  # fmt: skip
    refused = requests.post(busy_url + "/v1/chat/completions", json=chat, timeout=60)  # same 429 on OpenAI's route
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1, refused.text
    assert refused.json()["error"]["type"] == "rate_limit_error" and "busy" in refused.json()["error"]["message"]
    a.close()  # client A leaves: its slot goes to the queued request
    waiter.join(60)
    assert queued and queued[0].status_code == 200, queued and queued[0].text
    assert queued[0].json()["text"] == expected([png], max_new_tokens=8).text
    steps_at_close = _batching(busy_url)["steps"]
    b.close()
    _wait_for(lambda: _batching(busy_url)["slots_in_use"] == 0, "B's slot to be freed", 30)
    after = _batching(busy_url)
    assert after["cancelled"] - base["cancelled"] == 2 and after["rejected"] - base["rejected"] == 3
    assert after["finished"] - base["finished"] == 1  # only the queued request ran to its end
    assert after["steps"] - steps_at_close < 600, "B kept decoding long after its client left"
    ok = post(busy_url, [png], max_new_tokens=8)  # the queue drained: the next request is served
    assert ok.status_code == 200 and ok.json()["text"] == queued[0].json()["text"]


def test_a_stream_closed_before_its_first_block_is_read_frees_its_slot(busy_url):
    png = phantom_pngs()[0].read_bytes()
    _wait_for(lambda: _batching(busy_url)["slots_in_use"] == 0, "the replica to be idle", 60)
    base = _batching(busy_url)
    r = requests.post(busy_url + "/v1/reports/stream", files=[("images", ("a.png", png, "image/png"))],
                      data={"mode": "ar", "max_new_tokens": "1200"}, stream=True, timeout=120)  # fmt: skip
    assert r.status_code == 200, r.text
    r.close()  # gone right after the status line: no block read
    _wait_for(lambda: _batching(busy_url)["slots_in_use"] == 0, "the closed stream's slot to be freed", 30)
    after = _batching(busy_url)
    assert after["cancelled"] - base["cancelled"] == 1 and after["finished"] == base["finished"]
    assert after["steps"] - base["steps"] < 600, "the row kept decoding long after its client left"


def test_stream_chunks_are_joined_only_while_more_are_ready_and_the_tail_goes_in_one_write() -> None:
    """`coalesced`: events that need no wait on the engine share a write; order and bytes are unchanged."""
    import asyncio
    from types import SimpleNamespace

    from echo_ray.serve.service import coalesced

    # The row's state as each event is produced: (chunk, events still buffered, row finished).
    script = [(b"b0;", True, False), (b"b1;", False, False), (b"b2;", False, False), (b"b3;", False, True),
              (b"final;", False, True), (b"[DONE]", False, True)]  # fmt: skip
    remote = SimpleNamespace(buffered=False, finished=False)

    async def events():
        for chunk, buffered, finished in script:
            remote.buffered, remote.finished = buffered, finished
            yield chunk

    async def collect():
        return [w async for w in coalesced(events(), remote)]

    writes = asyncio.run(collect())
    assert writes == [b"b0;b1;", b"b2;", b"b3;final;[DONE]"]
    assert b"".join(writes) == b"".join(c for c, _, _ in script)

"""Hostile and careless clients (issue 12): stalled bodies, huge-dimension images, log forging.

The session's Ray cluster runs the Serve proxy with `body_guard.BodyGuard` and a 2-3 s body deadline
(tests/conftest.py GUARD_ENV), so stalled uploads are answered 408 quickly.
"""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import time
from pathlib import Path

import pytest
import requests
from PIL import Image
from serve_support import API_APP, API_ARGS, phantom_pngs, start_app

from echo_ray.serve.body_guard import BodyGuard, body_deadline_s

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


# --- BodyGuard as a plain ASGI middleware (no Ray) -------------------------------------------------


def _run_guard(headers: dict, messages: list[dict], stall: bool = False, **kw) -> tuple[list[dict], list[bytes]]:
    """Drive BodyGuard over a fake connection; returns (messages sent, bodies the inner app saw)."""
    seen: list[bytes] = []

    async def inner(scope, receive, send):
        msg = await receive()
        seen.append(msg.get("body", b""))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def main():
        queue = list(messages)
        sent: list[dict] = []

        async def receive():
            if queue:
                return queue.pop(0)
            if stall:
                await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(m):
            sent.append(m)

        scope = {"type": "http", "path": "/v1/reports", "headers": [(k.encode(), v.encode()) for k, v in headers.items()]}
        await BodyGuard(inner, **kw)(scope, receive, send)
        return sent

    return asyncio.run(main()), seen


def test_body_guard_buffers_passes_and_refuses():
    part = {"type": "http.request", "body": b"ab", "more_body": True}
    last = {"type": "http.request", "body": b"cd", "more_body": False}
    sent, seen = _run_guard({"content-length": "4"}, [part, last])
    assert sent[0]["status"] == 200 and seen == [b"abcd"]  # the app gets the whole body in one message
    sent, seen = _run_guard({}, [])  # GET: no body, straight through
    assert sent[0]["status"] == 200 and seen == [b""]
    t0 = time.monotonic()
    sent, seen = _run_guard({"content-length": "100"}, [part], stall=True, base_s=0.3, per_mb_s=0, max_s=1)
    assert sent[0]["status"] == 408 and not seen and time.monotonic() - t0 < 2
    sent, seen = _run_guard({"content-length": "99"}, [part], max_body_bytes=10)
    assert sent[0]["status"] == 413 and not seen
    sent, seen = _run_guard({"transfer-encoding": "chunked"}, [{**part, "body": b"x" * 20}], max_body_bytes=10)
    assert sent[0]["status"] == 413 and not seen
    sent, seen = _run_guard({"content-length": "4"}, [part])  # client left mid-body: nothing to answer
    assert sent == [] and not seen
    assert body_deadline_s(5_000_000, 5, 2, 60) == 15 and body_deadline_s(10**9, 5, 2, 60) == 60
    assert body_deadline_s(None, 5, 2, 60) == 60


# --- the live service -------------------------------------------------------------------------------


def _stall(host: str, port: int, path: str) -> socket.socket:
    """Headers plus half of a 2000-byte JSON body, then silence."""
    s = socket.create_connection((host, port), timeout=30)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: 2000\r\n\r\n")  # fmt: skip
    s.sendall(head.encode() + b'{"images": ["' + b"A" * 987)
    return s


def test_stalled_bodies_beyond_max_ongoing_requests_do_not_block_health(url):
    host, port_path = url.split("//")[1].split(":")
    port, prefix = int(port_path.split("/")[0]), "/" + port_path.split("/", 1)[1]
    n = 40  # > max_ongoing_requests (32)
    socks = [_stall(host, port, f"{prefix}/v1/reports") for _ in range(n)]
    t_stalled = time.monotonic()
    try:
        latencies = []
        for _ in range(5):
            t0 = time.monotonic()
            assert requests.get(f"{url}/healthz", timeout=5).status_code == 200
            latencies.append(time.monotonic() - t0)
        assert requests.get(f"{url}/readyz", timeout=5).status_code == 200
        statuses = []
        for s in socks:
            s.settimeout(15)
            statuses.append(s.recv(4096).split(b"\r\n", 1)[0])
        waited = time.monotonic() - t_stalled
    finally:
        for s in socks:
            s.close()
    print(f"\n{n} stalled clients: /healthz latency max {max(latencies) * 1000:.0f} ms; all answered in {waited:.1f} s")
    assert max(latencies) < 1.0, latencies
    assert all(b" 408 " in line for line in statuses), statuses[:3]
    assert waited < 10
    ok = requests.post(f"{url}/v1/reports", files=[("images", ("a.png", phantom_pngs()[0].read_bytes(), "image/png"))],
                       data={"max_new_tokens": "8"}, timeout=60)  # fmt: skip
    assert ok.status_code == 200, ok.text


def _big_png(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (side, side), 40).save(buf, format="PNG")
    return buf.getvalue()


def test_huge_dimensions_are_413_from_the_header(url):
    """Over max_pixels (600k here), and over Pillow's bomb limit (178 M): 413 before any decode."""
    big = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + (20000).to_bytes(4, "big") * 2 + b"\x08\x00\x00\x00\x00" + b"\0" * 64
    for data in (_big_png(1000), big):
        r = requests.post(f"{url}/v1/reports", files=[("images", ("x.png", data, "image/png"))], timeout=60)
        assert r.status_code == 413 and "pixels" in r.json()["error"], r.text
    four = [("images", (f"{i}.png", _big_png(700), "image/png")) for i in range(4)]  # 490k each, 1.96 M together
    r = requests.post(f"{url}/v1/reports", files=four, timeout=60)
    assert r.status_code == 200 or "together" in r.json()["error"]


def _replica_logs() -> str:
    from ray._private.worker import _global_node  # test-only: this session's log directory

    logs = Path(_global_node.get_session_dir_path()) / "logs" / "serve"
    return "".join(p.read_text(errors="replace") for p in logs.glob(f"replica_{API_APP}_*.log"))


def test_logs_escape_client_text_and_a_disconnect_is_not_an_error(url):
    forged = "x\n2099-01-01 ERROR FORGED line"
    r = requests.post(f"{url}/v1/reports", files=[("images", ("a.png", phantom_pngs()[0].read_bytes(), "image/png"))],
                      data={forged: "1", "Patient Jane Doe MRN 12345": "2"}, timeout=60)  # fmt: skip
    assert r.status_code == 422 and r.headers["x-request-id"]
    j = requests.post(f"{url}/v1/reports", json={"images": ["AAAA"], "Patient Jane Doe MRN 12345": 1}, timeout=60)
    k = requests.post(f"{url}/v1/reports", json={"images": ["AAAA"], "language": "Patient Jane Doe"}, timeout=60)
    assert j.status_code == 422 and k.status_code == 422 and "Jane Doe" in j.json()["error"]  # the caller is told
    # A client that sends a full request and hangs up before the answer.
    host, port_path = url.split("//")[1].split(":")
    body = b'{"images": ["' + __import__("base64").b64encode(phantom_pngs()[0].read_bytes()) + b'"]}'
    s = socket.create_connection((host, int(port_path.split("/")[0])), timeout=10)
    s.sendall(f"POST /{API_APP}/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(body)}\r\n\r\n".encode() + body)  # fmt: skip
    s.close()
    time.sleep(3)
    content = ""
    for _ in range(40):
        content = _replica_logs()
        if all(x.headers["x-request-id"] in content for x in (r, j, k)):
            break
        time.sleep(0.25)
    assert all(x.headers["x-request-id"] in content for x in (r, j, k))
    assert "Jane Doe" not in content and "MRN" not in content
    assert not any(line.startswith("2099-01-01 ERROR FORGED") for line in content.splitlines())
    assert "Traceback" not in content and "internal error" not in content


def test_client_disconnect_handler_logs_one_info_line():
    from starlette.requests import ClientDisconnect, Request

    from echo_ray.serve.service import _client_left, logger

    class Keep(logging.Handler):
        def __init__(self):
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record):
            self.records.append(record)

    request = Request({"type": "http", "method": "POST", "path": "/v1/reports\nFORGED", "headers": [],
                       "query_string": b"", "root_path": ""})  # fmt: skip
    keep, level = Keep(), logger.level
    logger.addHandler(keep)
    logger.setLevel(logging.INFO)
    try:
        response = asyncio.run(_client_left(request, ClientDisconnect()))
    finally:
        logger.removeHandler(keep)
        logger.setLevel(level)
    assert response.status_code == 499
    records = [r for r in keep.records if "disconnected" in r.getMessage()]
    assert len(records) == 1 and records[0].levelno == logging.INFO and records[0].exc_info is None
    assert "\n" not in records[0].getMessage()

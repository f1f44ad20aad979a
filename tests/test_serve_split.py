"""The ingress/engine split on local Ray: what crosses to the engine, token identity, and a killed engine replica.

- The engine replica receives a row of tensors and numbers only (no bytes, no images): its last row's
  leaf types, as the replica itself reports them.
- Plain and streamed answers equal a lone local decode of the same study, for rows sent by value
  (the usual) and rows too large for that, sent through the object store.
- Fault: two engine replicas under concurrent plain + streaming load, one killed with `ray.kill`:
  every plain request completes (no 5xx: the ingress retried it once on the other replica), every
  stream ends with `final` or `error` (never hangs), and Serve brings the deployment back to two.
"""

from __future__ import annotations

import base64
import io
import threading
import time

import pytest
import requests
from PIL import Image
from serve_support import API_APP, API_ARGS, MAX_NEW_TOKENS, http_base, local_generator, phantom_pngs, start_app, tiny_checkpoint, wait_ready

from echo_ray.serve.sse import parse_sse

pytestmark = pytest.mark.timeout(300)
ROW_LEAF_TYPES = {"Tensor", "int", "str", "float", "bool", "NoneType"}


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


def local_text(data: bytes, **overrides) -> tuple[str, int]:
    r = local_generator().generate([[Image.open(io.BytesIO(data)).convert("RGB")]], "en", **overrides)[0]
    return r.text, len(r.tokens)


def test_the_engine_receives_tensors_only(url):
    png = phantom_pngs()[1].read_bytes()
    chat = {"model": "echo_tiny", "max_tokens": 8, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + base64.b64encode(png).decode()}}]}]}  # fmt: skip
    for send in (lambda: requests.post(url + "/v1/reports", files=[("images", ("a.png", png, "image/png"))], timeout=60),
                 lambda: requests.post(url + "/v1/chat/completions", json=chat, timeout=60)):  # fmt: skip
        assert send().status_code == 200
        leaves = requests.get(url + "/v1/status", timeout=30).json()["batching"]["last_row"]
        assert leaves["row.prompt.pixel_values"] == "Tensor" and leaves["row.prompt.input_ids"] == "Tensor"
        assert leaves["row.prompt.image_grid_thw"] == "Tensor" and leaves["row.max_new_tokens"] == "int"
        assert set(leaves.values()) <= ROW_LEAF_TYPES, leaves  # no bytes, no PIL images, no request objects


def test_plain_and_streamed_tokens_equal_a_lone_local_decode(url):
    for i, mode in ((2, "onestep"), (4, "ar")):
        data = phantom_pngs()[i].read_bytes()
        text, n = local_text(data, mode=mode)
        files = [("images", ("a.png", data, "image/png"))]
        plain = requests.post(url + "/v1/reports", files=files, data={"mode": mode}, timeout=60).json()
        assert (plain["text"], plain["tokens"]) == (text, n) and n == MAX_NEW_TOKENS
        events = parse_sse(requests.post(url + "/v1/reports/stream", files=files, data={"mode": mode}, timeout=60).text)
        assert events[-1][0] == "final" and (events[-1][1]["text"], events[-1][1]["tokens"]) == (text, n)
        assert sum(d["new_tokens"] for name, d in events if name == "block") == n


BYREF_APP = "echo_byref"


def test_rows_over_the_by_value_limit_go_through_the_object_store_with_the_same_tokens(ray_cluster):
    from ray import serve

    from echo_ray.serve.app import compose, parse_app_args
    from echo_ray.serve.remote import EngineHandles, row_bytes

    row = local_generator().rows.row([Image.open(phantom_pngs()[3]).convert("RGB")], "en", "onestep", MAX_NEW_TOKENS)
    handles = EngineHandles("unary", "stream", "unary_ref", "stream_ref", row_bytes(row))  # which handle `pick` takes
    assert (handles.pick(row, False), handles.pick(row, True)) == ("unary", "stream")
    handles = EngineHandles("unary", "stream", "unary_ref", "stream_ref", row_bytes(row) - 1)
    assert (handles.pick(row, False), handles.pick(row, True)) == ("unary_ref", "stream_ref")
    # An app whose every row goes through the object store (the path of large studies) decodes the same.
    args = {"model": str(tiny_checkpoint()), "decode": {"max_new_tokens": MAX_NEW_TOKENS}, "row_by_value_max_bytes": 0,
            "max_body_bytes": 8_000_000}  # fmt: skip
    url = f"{http_base()}/{BYREF_APP}"
    serve.run(compose(*parse_app_args(args)), name=BYREF_APP, route_prefix=f"/{BYREF_APP}")
    wait_ready(url)
    data = phantom_pngs()[3].read_bytes()
    text, n = local_text(data)
    files = [("images", ("a.png", data, "image/png"))]
    plain = requests.post(url + "/v1/reports", files=files, timeout=120).json()
    assert (plain["text"], plain["tokens"]) == (text, n)
    events = parse_sse(requests.post(url + "/v1/reports/stream", files=files, timeout=120).text)
    assert events[-1][0] == "final" and events[-1][1]["text"] == text
    # The proxy hands requests to the ingress over gRPC (app.PROXY_ENV): a body over gRPC's 4 MiB
    # message limit but within max_body_bytes still reaches the ingress's own checks (not an image: 400).
    junk = requests.post(url + "/v1/reports", files=[("images", ("a.png", b"\0" * 6_000_000, "image/png"))], timeout=120)
    assert junk.status_code == 400 and "image" in junk.json()["error"]
    serve.delete(BYREF_APP)


FAULT_APP = "echo_fault"


def _deploy_two_engines() -> str:
    from ray import serve

    from echo_ray.serve.app import compose, parse_app_args

    args = {"model": str(tiny_checkpoint()), "decode": {"max_new_tokens": 8, "slots": {"max_rows": 8}}, "max_queue": 256,
            "max_new_tokens_limit": 512}  # fmt: skip
    url = f"{http_base()}/{FAULT_APP}"  # starts Serve's proxy on its port first
    serve.run(compose(*parse_app_args(args), engine={"num_replicas": 2}), name=FAULT_APP, route_prefix=f"/{FAULT_APP}")
    wait_ready(url)
    return url


def _engine_replicas() -> list[str]:
    """Names of the live engine replica actors (Serve names them SERVE_REPLICA::<app>#<deployment>#<id>)."""
    import ray

    prefix = f"SERVE_REPLICA::{FAULT_APP}#ReportEngine#"
    return sorted(a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(prefix))


def _running_engines() -> int:
    from ray import serve

    deps = serve.status().applications[FAULT_APP].deployments
    return deps["ReportEngine"].replica_states.get("RUNNING", 0)


def test_a_killed_engine_replica_loses_no_plain_request_and_hangs_no_stream(ray_cluster):
    import ray

    url = _deploy_two_engines()
    assert len(_engine_replicas()) == 2 and _running_engines() == 2
    png = phantom_pngs()[0].read_bytes()
    files = [("images", ("a.png", png, "image/png"))]
    form = {"mode": "ar", "max_new_tokens": "160"}  # one token per step: long enough to be in flight
    plain: list[requests.Response] = []
    streams: list[list[tuple[str, dict]]] = []
    first_block = threading.Event()

    def send_plain() -> None:
        plain.append(requests.post(url + "/v1/reports", files=files, data=form, timeout=120))

    def send_stream() -> None:
        with requests.post(url + "/v1/reports/stream", files=files, data=form, stream=True, timeout=120) as r:
            body = []
            for line in r.iter_lines(decode_unicode=True):
                body.append(line)
                first_block.set()
        streams.append(parse_sse("\n".join(body)))

    threads = [threading.Thread(target=send_plain) for _ in range(12)] + [threading.Thread(target=send_stream) for _ in range(6)]
    [t.start() for t in threads]
    assert first_block.wait(60), "no stream started"
    time.sleep(0.3)
    victim = _engine_replicas()[0]
    t_kill = time.monotonic()
    ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
    [t.join(150) for t in threads]
    assert len(plain) == 12 and len(streams) == 6, "a request hung"
    assert [r.status_code for r in plain] == [200] * 12, [(r.status_code, r.text[:200]) for r in plain if r.status_code != 200]
    assert all(r.json()["tokens"] == 160 for r in plain)
    ends = [events[-1][0] if events else "nothing" for events in streams]
    assert set(ends) <= {"final", "error"}, ends
    for events in streams:
        if events[-1][0] == "error":
            assert events[-1][1]["status"] == 503 and "engine replica failed" in events[-1][1]["error"]
    deadline = time.monotonic() + 120
    while _running_engines() < 2 or len(_engine_replicas()) != 2 or victim in _engine_replicas():
        assert time.monotonic() < deadline, "the engine deployment did not come back to two replicas"
        time.sleep(0.5)
    print(f"\nrecovered to two engine replicas {time.monotonic() - t_kill:.1f} s after the kill; stream ends {ends}")
    ok = requests.post(url + "/v1/reports", files=files, data={"max_new_tokens": "8"}, timeout=60)
    assert ok.status_code == 200
    from ray import serve

    serve.delete(FAULT_APP)

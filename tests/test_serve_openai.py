"""The OpenAI-compatible route with the real `openai` SDK (sync, async, streaming) against the running service.

The same images and settings must give /v1/reports' report; a stream sends one chunk per block and
its usage chunk counts the tokens written; bad input is a 4xx in OpenAI's error shape and the next
request succeeds.
"""

from __future__ import annotations

import asyncio
import base64

import openai
import pytest
import requests
from serve_support import API_APP, API_ARGS, local_generator, phantom_pngs, start_app
from PIL import Image

from echo_ray.serve.sse import parse_sse

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def url(ray_cluster):
    return start_app(API_APP, **API_ARGS)


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def messages(*images: bytes, text: str = "Describe this chest X-ray.") -> list[dict]:
    parts = [{"type": "text", "text": text}] + [{"type": "image_url", "image_url": {"url": data_url(b)}} for b in images]
    return [{"role": "system", "content": "You are a poet."}, {"role": "user", "content": parts}]


def native(url: str, images: list[bytes], **fields) -> dict:
    files = [("images", (f"{i}.png", b, "image/png")) for i, b in enumerate(images)]
    r = requests.post(url + "/v1/reports", files=files, data={k: str(v) for k, v in fields.items()}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_sync_plain_reply_equals_the_native_report_with_usage(url):
    a, b = (p.read_bytes() for p in phantom_pngs()[:2])
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="echo_tiny", messages=messages(a, b), max_tokens=16, temperature=0,
                                           extra_body={"language": "zh", "mode": "multistep", "steps": 4})  # fmt: skip
    ref = native(url, [a, b], language="zh", mode="multistep", max_new_tokens=16)
    assert reply.choices[0].message.content == ref["text"] and reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == ref["tokens"] == 16
    prompt_len = local_generator().prompts([[Image.open(p).convert("RGB") for p in phantom_pngs()[:2]]], "zh")[0].length
    assert reply.usage.prompt_tokens == prompt_len and reply.usage.total_tokens == prompt_len + 16
    # message text does not change the prompt: another instruction gives the same report
    again = client.chat.completions.create(model="echo_tiny", messages=messages(a, b, text="Write a haiku"),
                                           max_completion_tokens=16, extra_body={"language": "zh", "mode": "multistep", "steps": 4})  # fmt: skip
    assert again.choices[0].message.content == ref["text"]
    assert [m.id for m in client.models.list().data] == ["echo_tiny"]


def test_stream_one_chunk_per_block_and_a_usage_chunk(url):
    data = phantom_pngs()[3].read_bytes()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    chunks = list(client.chat.completions.create(model="echo_tiny", messages=messages(data), max_tokens=20, stream=True,
                                                 stream_options={"include_usage": True}))  # fmt: skip
    ref = native(url, [data], max_new_tokens=20)
    blocks = [n for n, _ in parse_sse(requests.post(url + "/v1/reports/stream", files=[("images", ("a.png", data, "image/png"))],
                                                    data={"max_new_tokens": "20"}, timeout=60).text) if n == "block"]  # fmt: skip
    content, usage = [c for c in chunks if c.choices], chunks[-1]
    assert len(content) == len(blocks) >= 3, "one chunk per committed block"
    assert "".join(c.choices[0].delta.content or "" for c in content) == ref["text"]
    assert content[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in content] == [None] * (len(content) - 1) + ["length"]
    assert usage.choices == [] and usage.usage.completion_tokens == ref["tokens"] == 20


def test_async_client_concurrent_requests_match_native(url):
    images = [p.read_bytes() for p in phantom_pngs()[:4]]
    refs = [native(url, [b], max_new_tokens=16)["text"] for b in images]

    async def run() -> list[str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        replies = await asyncio.gather(*[client.chat.completions.create(model="echo_tiny", messages=messages(b), max_tokens=16)
                                         for b in images])  # fmt: skip
        await client.close()
        return [r.choices[0].message.content for r in replies]

    assert asyncio.run(run()) == refs


def _bad_requests(png: bytes) -> list[tuple[str, dict, int]]:
    img = {"type": "image_url", "image_url": {"url": data_url(png)}}
    user = lambda *parts: [{"role": "user", "content": list(parts)}]  # noqa: E731
    return [
        ("no image", dict(messages=[{"role": "user", "content": "hello"}]), 400),
        ("5 images", dict(messages=user(*[img] * 5)), 400),
        ("bad base64", dict(messages=user({"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}})), 400),
        ("http url", dict(messages=user({"type": "image_url", "image_url": {"url": "https://example.com/a.png"}})), 400),
        ("temperature 0.7", dict(messages=user(img), temperature=0.7), 400),
        ("unknown model", dict(messages=user(img), model="gpt-4o"), 404),
        ("gif image", dict(messages=user({"type": "image_url", "image_url": {"url": data_url(b"GIF89a" + b"\0" * 40, "image/gif")}})), 415),
    ]


def test_bad_inputs_are_4xx_in_openai_error_shape_and_the_next_request_succeeds(url):
    png = phantom_pngs()[0].read_bytes()
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    for name, kwargs, status in _bad_requests(png):
        kwargs = {"model": "echo_tiny", "max_tokens": 8, **kwargs}
        with pytest.raises(openai.APIStatusError) as e:
            client.chat.completions.create(**kwargs)
        assert e.value.status_code == status, f"{name}: {e.value.status_code} {e.value.body}"
        err = e.value.body
        assert set(err) >= {"message", "type", "code"} and err["message"], f"{name}: {err}"  # the SDK unwraps "error"
        raw = requests.post(url + "/v1/chat/completions", json=kwargs, timeout=60)
        assert raw.status_code == status and set(raw.json()) == {"error"}, f"{name}: {raw.text[:200]}"
        ok = client.chat.completions.create(model="echo_tiny", messages=messages(png), max_tokens=8)
        assert ok.choices[0].finish_reason in ("stop", "length"), name


def test_stream_deltas_hold_back_split_characters_and_trailing_space():
    from echo_ray.serve.openai_api import stable_delta

    assert stable_delta("所见\ufffd", "") == "所见"  # a character split across blocks waits for its bytes
    assert stable_delta("所见：a \n", "所见") == "：a"  # trailing whitespace waits (stripped if the report ends)
    assert stable_delta("所见：a b", "所见：a") == " b"

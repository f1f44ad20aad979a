"""The engine replica's EngineCore over the real scheduler thread (tiny model, CPU, no Ray): a plain
row's blocks come over in one message (and in one answer through `whole`, the unary entry), a stream's as they finish after `Accepted`; both give the
tokens of a lone local decode; refusals (too long, queue full) come before any decoding."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from PIL import Image
from serve_support import local_generator, phantom_pngs

from echo_ray.decode.engine import DecodeEngine
from echo_ray.decode.scheduler import BlockUpdate
from echo_ray.serve.continuous import Accepted, EngineCore, Refused

pytestmark = pytest.mark.timeout(300)


def study(i: int) -> list[Image.Image]:
    return [Image.open(phantom_pngs()[i]).convert("RGB")]


def core(max_queue: int = 8) -> EngineCore:
    gen = local_generator()
    c = gen.ckpt
    return EngineCore(DecodeEngine(c.model, c.mask_id, c.eos_id, replace(gen.cfg.slots, max_rows=2)), max_queue)


async def _collect(c: EngineCore, row, streaming: bool) -> list:
    return [m async for m in c.run(row, 120.0, streaming)]


def test_plain_rows_come_in_one_message_streams_one_per_block_same_tokens() -> None:
    gen = local_generator()
    budget = 4 * int(gen.cfg.block_size or 8)
    row = gen.rows.row(study(0), "en", "onestep", budget)
    alone = gen.generate([study(0)], "en", mode="onestep", max_new_tokens=budget)[0].tokens
    c = core()
    c.start()
    try:
        plain = asyncio.run(_collect(c, row, False))
        stream = asyncio.run(_collect(c, row, True))
        whole = asyncio.run(c.whole(row, 120.0))  # the unary entry plain requests use
    finally:
        c.close()
    assert len(plain) == 1, "a plain row wakes the ingress once, with its last block"
    assert isinstance(stream[0], Accepted) and len(stream) > 2  # blocks arrive as they finish, not all at the end
    plain_tokens = [t for u in plain[0] for t in u.event.tokens]
    stream_tokens = [t for m in stream[1:] for u in m for t in u.event.tokens]
    assert plain_tokens == stream_tokens == alone
    assert [t for u in whole for t in u.event.tokens] == alone and whole[-1].event.finished
    assert len(plain[0]) == sum(len(m) for m in stream[1:]) >= 2  # the same blocks
    assert all(isinstance(u, BlockUpdate) and u.event.trace is None for m in plain for u in m)
    assert c.snapshot()["served"] == 3


def test_a_row_too_long_or_a_full_queue_is_refused_before_decoding() -> None:
    gen = local_generator()
    c = core(max_queue=0)  # no thread: nothing is admitted, so the queue stays full
    too_long = gen.rows.row(study(0), "en", "onestep", 8)
    too_long.max_new_tokens = 10_000
    (msg,) = asyncio.run(_collect(c, too_long, True))
    assert isinstance(msg, Refused) and msg.status == 422 and "max_len" in msg.message
    (msg,) = asyncio.run(_collect(c, gen.rows.row(study(0), "en", "onestep", 8), True))
    assert isinstance(msg, Refused) and msg.status == 429 and msg.retry_after_s >= 1
    msg = asyncio.run(c.whole(too_long, 120.0))
    assert isinstance(msg, Refused) and msg.status == 422

"""ContinuousDecoder handles over the real scheduler thread (tiny model, CPU, no Ray): a plain
request's blocks reach the event loop in one hand-over, a stream's one per block; both give the
tokens of a lone local decode."""

from __future__ import annotations

import asyncio
import time

import pytest
from serve_support import local_generator, phantom_pngs
from PIL import Image

from echo_ray.serve.continuous import ContinuousDecoder

pytestmark = pytest.mark.timeout(300)


def study(i: int) -> list[Image.Image]:
    return [Image.open(phantom_pngs()[i]).convert("RGB")]


class CountingQueue(asyncio.Queue):
    """An asyncio.Queue that counts hand-overs from the scheduler thread."""

    puts = 0

    def put_nowait(self, item) -> None:
        CountingQueue.puts += 1
        super().put_nowait(item)


async def _decode(dec: ContinuousDecoder, streaming: bool, budget: int):
    CountingQueue.puts = 0
    handle = await dec.open(study(0), "en", "onestep", budget, time.monotonic() + 120, streaming=streaming)
    assert isinstance(handle._updates, CountingQueue)
    blocks = 0
    while await handle.next_block() is not None:
        blocks += 1
    return handle.report().tokens, blocks, CountingQueue.puts


def test_plain_requests_get_one_hand_over_streams_one_per_block_same_tokens(monkeypatch) -> None:
    monkeypatch.setattr(asyncio, "Queue", CountingQueue)  # the handles' queues count what is put
    gen = local_generator()
    budget = 4 * int(gen.cfg.block_size or 8)
    dec = ContinuousDecoder(gen, gen.engine, max_queue=8, timeout_s=120)
    alone = gen.generate([study(0)], "en", mode="onestep", max_new_tokens=budget)[0].tokens
    dec.start()
    try:
        plain, plain_blocks, plain_puts = asyncio.run(_decode(dec, False, budget))
        stream, stream_blocks, stream_puts = asyncio.run(_decode(dec, True, budget))
    finally:
        dec.close()
    assert plain == stream == alone
    assert plain_blocks == stream_blocks >= 2
    assert plain_puts == 1, "a plain request wakes the event loop once, with its last block"
    assert stream_puts == stream_blocks

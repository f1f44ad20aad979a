"""One dataset row -> one training example, and the per-worker cache of processed prompts."""

from __future__ import annotations

import pytest
import torch

from echo_ray.config import PromptConfig
from echo_ray.data.phantom_dataset import phantom_rows
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.train.examples import PromptCache, _nbytes, encode_row


@pytest.fixture(scope="module")
def ckpt(tiny_ckpt_dir):
    return load_checkpoint(str(tiny_ckpt_dir))


def _encode(ckpt, row, cache=None):
    return encode_row(row, ckpt.tokenizer, ckpt.image_processor, PromptConfig(), cache=cache)


def test_cached_prompts_equal_fresh_ones_and_skip_image_reads(ckpt, phantom_dir):
    rows = phantom_rows(phantom_dir)[:3]
    cache = PromptCache(max_mb=64)
    fresh = [_encode(ckpt, r) for r in rows]
    first = [_encode(ckpt, r, cache) for r in rows]
    again = [_encode(ckpt, r, cache) for r in rows]  # a second epoch
    assert (cache.misses, cache.hits) == (3, 3)
    for f, a, b in zip(fresh, first, again):
        assert b.prompt is a.prompt  # served from the cache, not rebuilt
        for name in ("input_ids", "pixel_values", "image_grid_thw"):
            assert torch.equal(getattr(f.prompt, name), getattr(b.prompt, name))
        assert torch.equal(f.response, b.response)


def test_cache_is_bounded_by_size_and_zero_keeps_nothing(ckpt, phantom_dir):
    every = phantom_rows(phantom_dir)
    one = _nbytes(_encode(ckpt, every[0]).prompt)
    rows = [r for r in every if _nbytes(_encode(ckpt, r).prompt) == one][:4]  # studies with as many images
    assert len(rows) == 4
    cache = PromptCache(max_mb=2.5 * one / 2**20)  # room for two prompts
    for r in rows:
        _encode(ckpt, r, cache)
    assert len(cache._items) == 2 and cache.bytes <= cache.max_bytes
    _encode(ckpt, rows[0], cache)  # evicted (least recently used): read again
    assert cache.misses == 5
    none = PromptCache(max_mb=0)
    _encode(ckpt, rows[0], none)
    assert none.bytes == 0 and not none._items


def test_row_without_images_or_report_is_named(ckpt, phantom_dir):
    row = dict(phantom_rows(phantom_dir)[0])
    with pytest.raises(InputError, match=f"study {row['study_id']}: no images"):
        _encode(ckpt, {**row, "images": []}, PromptCache(8))
    with pytest.raises(InputError, match="empty report"):
        _encode(ckpt, {**row, "report": " "}, PromptCache(8))

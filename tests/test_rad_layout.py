"""RAD layout (EOS padding, noisy copy from the block edge, token counts) and per-block noise."""

from __future__ import annotations

import pytest
import torch

from echo_ray.train.noise import sample_block_noise
from echo_ray.train.rad import collate_rad, stack_layouts
from echo_ray.train.rad_layout import full_duplication_layout, pad_response, padded_response_len, rad_layout

EOS = 2


def test_pad_response_reaches_block_edge():
    resp = torch.arange(10, 15)  # R = 5
    for P in (8, 11, 13, 16):
        out = pad_response(resp, P, 8, EOS)
        assert (P + len(out)) % 8 == 0 and 0 <= len(out) - 5 < 8
        assert torch.equal(out[:5], resp) and bool((out[5:] == EOS).all())
    assert padded_response_len(16, 8, 8) == 8  # already aligned: no padding


def test_layout_duplicates_only_the_response():
    prompt, B = torch.arange(100, 113), 4  # P = 13: blocks [0,4) .. [12,16); prompt tail = token 12
    resp = pad_response(torch.arange(200, 206), 13, B, EOS)  # R = 6 -> R' = 7, T = 20
    lay = rad_layout(prompt, resp, B)
    assert (lay.clean_len, lay.noisy_start, lay.length) == (20, 12, 28)
    assert torch.equal(lay.source[20:], torch.arange(12, 20))
    assert torch.equal(lay.ids[20:], lay.ids[12:20])
    assert torch.equal(lay.block[20:], torch.tensor([3, 3, 3, 3, 4, 4, 4, 4]))
    # the prompt tail in the first noisy block is never a candidate for masking
    assert lay.candidate[20:].tolist() == [False] + [True] * 7
    assert not bool(lay.candidate[:20].any()) and int(lay.is_noisy.sum()) == 8
    full = full_duplication_layout(prompt, resp, B)
    assert full.length == 2 * 20 and int(full.candidate.sum()) == 7
    with pytest.raises(ValueError, match="not a multiple of the block size"):
        rad_layout(prompt, torch.arange(2), B)
    # the trainer's collation puts MASK only where the noise says, and only on candidates
    stacked = stack_layouts([lay], pad_id=0)
    pos = torch.arange(20).expand(3, 20)
    masked = torch.zeros(1, 28, dtype=torch.bool)
    masked[0, 21] = True
    out = collate_rad(stacked, [lay], [pos], masked, torch.full((1, 28), 0.5), mask_id=9)
    assert int(out["input_ids"][0, 21]) == 9 and torch.equal(out["input_ids"][0, :21], lay.ids[:21])
    with pytest.raises(ValueError, match="not a noisy response token"):
        collate_rad(stacked, [lay], [pos], torch.ones(1, 28, dtype=torch.bool), torch.ones(1, 28), mask_id=9)


def test_token_counts_at_the_benchmark_shape():
    prompt, resp = torch.zeros(1024, dtype=torch.long), torch.ones(256, dtype=torch.long)
    lay = rad_layout(prompt, pad_response(resp, 1024, 8, EOS), 8)
    assert lay.length == 1024 + 2 * 256  # P + 2R when P is block-aligned
    assert full_duplication_layout(prompt, pad_response(resp, 1024, 8, EOS), 8).length == 2 * (1024 + 256)


def test_noise_per_block_rate_and_at_least_one_mask():
    lay = rad_layout(torch.arange(13), pad_response(torch.arange(40), 13, 8, EOS), 8)
    block, cand = lay.block[None], lay.candidate[None]
    rates = []
    for seed in range(30):
        masked, t = sample_block_noise(block, cand, 0.3, 0.8, torch.Generator().manual_seed(seed))
        assert not bool((masked & ~cand).any())
        for b in torch.unique(block[cand]).tolist():
            sel = cand & (block == b)
            assert bool(masked[sel].any())  # every noisy block trains
            tb = torch.unique(t[sel])
            assert len(tb) == 1 and 0.3 <= float(tb) <= 0.8  # one rate per block
            rates.append(float(tb))
        assert bool((t[~cand] == 0).all())
    assert max(rates) - min(rates) > 0.2  # rates vary across blocks
    a = sample_block_noise(block, cand, 0.3, 0.8, torch.Generator().manual_seed(7))
    b = sample_block_noise(block, cand, 0.3, 0.8, torch.Generator().manual_seed(7))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # reproducible for a resumed step
    with pytest.raises(ValueError, match="t_min <= t_max"):
        sample_block_noise(block, cand, 0.9, 0.2)


def test_masking_rate_follows_t():
    block = torch.zeros(1, 4000, dtype=torch.long)
    masked, t = sample_block_noise(block, torch.ones(1, 4000, dtype=torch.bool), 0.5, 0.5, torch.Generator().manual_seed(0))
    assert abs(float(masked.float().mean()) - 0.5) < 0.03

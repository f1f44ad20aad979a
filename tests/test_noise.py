"""Noise for training rows (echo_ray.train.noise): the DCD student's in-block context noise.
(`sample_block_noise`, RAD's masking, is tested with the layout in test_rad_layout.py.)"""

from __future__ import annotations

import pytest
import torch

from echo_ray.train.noise import mix_block_tokens


def _row():
    ids = torch.arange(100, 132).reshape(1, 32)  # every token distinct, so moves are visible
    block = (torch.arange(32) // 8).reshape(1, 32)
    eligible = torch.zeros(1, 32, dtype=torch.bool)
    eligible[0, 5:30] = True  # a prompt before, padding after
    return ids, block, eligible


def test_mixing_moves_tokens_only_within_their_block_and_only_where_eligible() -> None:
    ids, block, eligible = _row()
    out = mix_block_tokens(ids, block, eligible, 0.5, torch.Generator().manual_seed(0))
    assert torch.equal(out[~eligible], ids[~eligible]), "prompt and padding never change"
    changed = out != ids
    assert 0 < int(changed.sum()) < int(eligible.sum())
    for j in torch.nonzero(changed[0]).flatten().tolist():
        src = int(out[0, j]) - 100  # the slot the token came from
        assert bool(eligible[0, src]) and int(block[0, src]) == int(block[0, j])
    assert torch.equal(ids, torch.arange(100, 132).reshape(1, 32)), "the input is not modified"


def test_mixing_rate_zero_is_identity_and_rate_is_checked() -> None:
    ids, block, eligible = _row()
    assert torch.equal(mix_block_tokens(ids, block, eligible, 0.0), ids)
    with pytest.raises(ValueError, match="context noise rate"):
        mix_block_tokens(ids, block, eligible, 1.0)


def test_mixing_rate_is_roughly_the_fraction_replaced() -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.arange(4000).reshape(10, 400)
    block = (torch.arange(400) // 8).expand(10, 400)
    out = mix_block_tokens(ids, block, torch.ones(10, 400, dtype=torch.bool), 0.1, g)
    # a hit may draw its own slot (1 in 8), so about 0.1 * 7/8 of the tokens change
    assert 0.06 < float((out != ids).float().mean()) < 0.12

"""Masks against brute-force references written directly from method.md's rules."""

from __future__ import annotations

import pytest
import torch

from echo_ray.model.masks import (
    block_causal_mask,
    causal_mask,
    decode_step_mask,
    rad_mask,
    to_additive,
)


def _padded_rows(lengths: list[int], B: int, left: bool):
    """Rows padded to a common length by whole blocks (left) or at the end (right).

    Returns (row-local positions (N, L), valid (N, L)); padding has position -1.
    """
    if left:
        K = max(-(-n // B) for n in lengths)
        L = K * B
        pos = torch.full((len(lengths), L), -1)
        for i, n in enumerate(lengths):
            pad = L - (-(-n // B)) * B  # whole blocks only
            pos[i, pad : pad + n] = torch.arange(n)
    else:
        L = max(lengths)
        pos = torch.full((len(lengths), L), -1)
        for i, n in enumerate(lengths):
            pos[i, :n] = torch.arange(n)
    return pos, pos >= 0


def _ref_block_causal(pos: torch.Tensor, B: int) -> torch.Tensor:
    """method.md: a token attends to every token of earlier blocks and all of its own block."""
    N, L = pos.shape
    ref = torch.zeros(N, L, L, dtype=torch.bool)
    for n in range(N):
        for q in range(L):
            for k in range(L):
                if pos[n, k] >= 0 and pos[n, q] >= 0:
                    ref[n, q, k] = pos[n, k] // B <= pos[n, q] // B
    return ref


@pytest.mark.parametrize("B", [4, 8])
@pytest.mark.parametrize("left", [True, False])
def test_block_causal_matches_reference(B: int, left: bool) -> None:
    lengths = [13, 16, 5]  # 16 ends on a block boundary for B in {4, 8}; 13 and 5 do not
    pos, valid = _padded_rows(lengths, B, left)
    # Left padding is by whole blocks, so column // B is a per-row shift of the true block index.
    col = torch.arange(pos.shape[1])[None].expand_as(pos) if left else pos.clamp(min=0)
    got = block_causal_mask(col // B, valid)
    ref = _ref_block_causal(pos, B)
    for n in range(len(lengths)):
        real = valid[n]
        assert torch.equal(got[n][real][:, real], ref[n][real][:, real])
        assert not got[n][:, ~real].any(), "padding keys must never be attended"


def test_causal_mask_is_token_causal() -> None:
    pos, valid = _padded_rows([6, 3], 1, left=False)
    got = causal_mask(pos.clamp(min=0), valid)
    assert torch.equal(got[0], torch.tril(torch.ones(6, 6, dtype=torch.bool)))
    assert not got[1][:, 3:].any()


def _rad_row(P: int, R: int, B: int):
    """Descriptors of one RAD row: kinds 'p' prompt, 'c' clean, 'n' noisy; source positions."""
    Rp = -(-(P + R) // B) * B - P  # response padded so P + R' is a block multiple
    start = (P // B) * B  # noisy copy starts at the block boundary at or before the response
    kinds = ["p"] * P + ["c"] * Rp + ["n"] * (P + Rp - start)
    src = list(range(P)) + list(range(P, P + Rp)) + list(range(start, P + Rp))
    return kinds, torch.tensor(src)


def _ref_rad(kinds: list[str], src: torch.Tensor, B: int) -> torch.Tensor:
    """method.md RAD rule, written out case by case."""
    L = len(kinds)
    ref = torch.zeros(L, L, dtype=torch.bool)
    for q in range(L):
        for k in range(L):
            bq, bk = int(src[q]) // B, int(src[k]) // B
            if kinds[q] in "pc":  # clean/prompt: block-causal among [prompt | clean], never noisy
                ref[q, k] = kinds[k] in "pc" and bk <= bq
            else:  # noisy block b: clean/prompt of blocks < b, noisy of block b
                ref[q, k] = (kinds[k] in "pc" and bk < bq) or (kinds[k] == "n" and bk == bq)
    return ref


@pytest.mark.parametrize("B", [4, 8])
@pytest.mark.parametrize("P,R", [(13, 9), (16, 8), (5, 3)])
def test_rad_mask_matches_reference(B: int, P: int, R: int) -> None:
    kinds, src = _rad_row(P, R, B)
    noisy = torch.tensor([k == "n" for k in kinds])
    got = rad_mask((src // B)[None], noisy[None], torch.ones(1, len(kinds), dtype=torch.bool))[0]
    assert torch.equal(got, _ref_rad(kinds, src, B))
    clean_rows = ~noisy
    assert not got[clean_rows][:, noisy].any(), "no clean or prompt token may attend to a noisy token"


def test_rad_mask_batch_with_padding() -> None:
    B = 4
    rows = [_rad_row(13, 9, B), _rad_row(6, 2, B)]
    L = max(len(k) for k, _ in rows)
    block = torch.zeros(2, L, dtype=torch.long)
    noisy = torch.zeros(2, L, dtype=torch.bool)
    valid = torch.zeros(2, L, dtype=torch.bool)
    for i, (kinds, src) in enumerate(rows):
        n = len(kinds)
        block[i, :n] = src // B
        noisy[i, :n] = torch.tensor([k == "n" for k in kinds])
        valid[i, :n] = True
    got = rad_mask(block, noisy, valid)
    for i, (kinds, src) in enumerate(rows):
        n = len(kinds)
        assert torch.equal(got[i, :n, :n], _ref_rad(kinds, src, B))
        assert not got[i, :, n:].any()


@pytest.mark.parametrize("B", [4, 8])
def test_decode_step_masks_vanilla_and_fused(B: int) -> None:
    """Cache = prefix blocks 0..1 (row 1 left-padded by one block); queries per the decode rules."""
    C = 2 * B
    cache_block = torch.arange(C)[None].expand(2, -1) // B
    cache_valid = torch.ones(2, C, dtype=torch.bool)
    cache_valid[1, :B] = False  # row 1 padded by a whole block
    # vanilla step: block 2 all noisy
    qb = torch.full((2, B), 2)
    m = decode_step_mask(cache_block, cache_valid, qb, torch.ones(2, B, dtype=torch.bool), torch.ones(2, B, dtype=torch.bool))
    assert m.shape == (2, B, C + B)
    assert m[0, :, :C].all() and m[0, :, C:].all()
    assert not m[1, :, :B].any() and m[1, :, B:].all()
    # fused step: [final block 2 (clean) | block 3 (noisy)]
    qb = torch.cat([torch.full((2, B), 2), torch.full((2, B), 3)], dim=1)
    qn = torch.cat([torch.zeros(2, B, dtype=torch.bool), torch.ones(2, B, dtype=torch.bool)], dim=1)
    m = decode_step_mask(cache_block, cache_valid, qb, qn, torch.ones(2, 2 * B, dtype=torch.bool))
    first, second = m[0, :B], m[0, B:]
    assert first[:, : C + B].all() and not first[:, C + B :].any(), "clean half: cache + itself, never the MASKs"
    assert second.all(), "noisy half: cache, block k-1 and itself"
    assert not m[1, :, :B].any()


def test_to_additive_is_finite_and_shaped() -> None:
    m = torch.tensor([[[True, False], [False, False]]])
    a = to_additive(m, torch.float32)
    assert a.shape == (1, 1, 2, 2)
    assert a[0, 0, 0, 0] == 0 and a[0, 0, 0, 1] == torch.finfo(torch.float32).min
    assert torch.isfinite(a).all()

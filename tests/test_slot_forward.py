"""The slot forward equals the HF Qwen2.5-VL language model (float64) for prefill and cached block steps."""

from __future__ import annotations

import pytest
import torch

from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.forward import embed, extend_positions, lm_logits
from echo_ray.model.masks import block_causal_mask, decode_step_mask
from echo_ray.model.slot_forward import SlotKV, block_vis_end, slot_forward


@pytest.fixture(scope="module")
def model(tiny_ckpt_dir):
    m = load_checkpoint(str(tiny_ckpt_dir)).model
    return m.double()


def test_prefill_and_fused_step_match_hf(model) -> None:
    torch.manual_seed(0)
    B, P, n = 4, 12, 2
    V = model.config.get_text_config().vocab_size
    ids = torch.randint(10, V - 10, (n, P + 2 * B))
    pos = torch.arange(P + 2 * B)[None].expand(n, -1)
    positions = (pos + 3)[None].expand(3, -1, -1)  # text positions with a delta of 3
    emb = embed(model, ids)
    # Reference: one HF forward over [prompt | clean block | noisy block] with the two-stream mask.
    block = torch.div(pos, B, rounding_mode="floor")
    valid = torch.ones_like(ids, dtype=torch.bool)
    prefix_mask = block_causal_mask(block[:, :P], valid[:, :P])
    want_prefill = lm_logits(model, emb[:, :P], positions[:, :, :P], prefix_mask)
    noisy = torch.zeros((n, 2 * B), dtype=torch.bool)
    noisy[:, B:] = True
    step_mask = decode_step_mask(block[:, :P], valid[:, :P], block[:, P:], noisy, valid[:, P:])
    full_mask = torch.cat([torch.cat([prefix_mask, torch.zeros((n, P, 2 * B), dtype=torch.bool)], 2), step_mask], 1)
    want_step = lm_logits(model, emb, positions, full_mask)[:, P + B :]

    kv = SlotKV(model, max_rows=4, length=64)
    for t in kv.k + kv.v:
        t.fill_(float("nan"))  # nothing outside the written positions may be read
    rows = slice(1, 3)
    for r in range(1, 3):
        kv.clear(r)
    got_prefill = slot_forward(model, kv, rows, emb[:, :P], positions[:, :, :P], pos[:, :P], block_vis_end(pos[:, :P], B),
                               key_len=P, read=slice(0, P))  # fmt: skip
    assert torch.allclose(got_prefill.float(), want_prefill, atol=1e-9)
    q = pos[:, P:]
    got_step = slot_forward(model, kv, torch.tensor([1, 2]), emb[:, P:], positions[:, :, P:], q, block_vis_end(q, B),
                            key_len=P + 2 * B, read=slice(B, 2 * B))  # fmt: skip
    assert got_step.dtype == torch.float64
    assert torch.allclose(got_step.float(), want_step, atol=1e-9)


def test_extend_positions_continue_with_delta(model) -> None:
    pos = torch.arange(5)[None].expand(3, -1)
    assert extend_positions(pos, 7, 8)[:, 5:].tolist() == [[12, 13, 14]] * 3

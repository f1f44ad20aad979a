"""RAD stage: batch building, loss == block-by-block decoding reference, no noisy->clean leak."""

from __future__ import annotations

import pytest
import torch

from echo_ray.config import NoiseConfig, PromptConfig
from echo_ray.data.phantom_dataset import phantom_rows
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.forward import embed, image_features, lm_logits
from echo_ray.model.masks import block_causal_mask, rad_mask
from echo_ray.train.examples import Limits
from echo_ray.train.rad import RadStage
from echo_ray.train.stage import ModelParts, batch_embeds


@pytest.fixture(scope="module")
def parts(tiny_ckpt_dir):
    ckpt = load_checkpoint(str(tiny_ckpt_dir))
    return ModelParts(ckpt.model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, 8, PromptConfig())


@pytest.fixture(scope="module")
def rows(phantom_dir):
    return phantom_rows(phantom_dir)


def _stage(max_response: int = 256) -> RadStage:
    return RadStage(Limits(max_prompt_tokens=512, max_response_tokens=max_response), NoiseConfig(t_min=0.3, t_max=0.8))


def test_batch_layout_follows_method(parts, rows):
    batch = _stage().build_batch(rows[:3], parts, torch.Generator().manual_seed(0))
    B = parts.block_size
    for i in range(3):
        valid = batch["valid"][i]
        noisy = batch["is_noisy"][i] & valid
        clean_len = int((~batch["is_noisy"][i] & valid).sum())
        assert clean_len % B == 0  # response padded with EOS to a block multiple
        first_noisy = int(torch.nonzero(noisy)[0])
        assert first_noisy == clean_len
        # noisy copy reuses the clean copy's block ids and M-RoPE ids, starting on a block edge
        n_noisy = int(noisy.sum())
        src = torch.arange(clean_len - n_noisy, clean_len)
        assert src[0] % B == 0
        assert torch.equal(batch["block"][i, noisy], src // B)
        assert torch.equal(batch["position_ids"][:, i, noisy], batch["position_ids"][:, i, src])
        assert torch.equal(batch["targets"][i, noisy], batch["targets"][i, src])
        # every noisy block with response tokens has at least one MASK, and only response slots are masked
        masked = batch["masked"][i]
        for b in torch.unique(batch["block"][i, noisy]).tolist():
            assert bool(masked[noisy & (batch["block"][i] == b)].any())
        assert torch.all(batch["input_ids"][i, masked] == parts.mask_id)
        assert not bool(masked[~noisy].any())
        t = batch["t"][i, masked]
        assert bool(((t >= 0.3) & (t <= 0.8)).all())
    # n_response counts the (EOS-padded) response tokens: exactly the noisy slots that carry a rate t
    assert int(batch["n_response"]) == int((batch["t"] > 0).sum())


def _blockwise_loss(model, parts, batch) -> torch.Tensor:
    """Reference: for every noisy block, a plain forward over [prompt | clean prefix | that block]."""
    B = parts.block_size
    total = torch.zeros((), dtype=torch.float64)
    grids = batch["image_grid_thw"]
    per_row = [int(g.prod()) // parts.image_processor.merge_size**2 for g in grids]
    feats = image_features(model, batch["pixel_values"], grids)
    offset, img = 0, 0
    for i in range(batch["valid"].shape[0]):
        valid, noisy = batch["valid"][i], batch["is_noisy"][i]
        clean_ids = batch["targets"][i, valid & ~noisy]
        n_img = int((clean_ids == parts.image_token_id).sum())
        k_imgs = 0
        while sum(per_row[img : img + k_imgs]) < n_img:
            k_imgs += 1
        row_feats = feats[offset : offset + n_img]
        offset, img = offset + n_img, img + k_imgs
        noisy_idx = torch.nonzero(valid & noisy).flatten()
        for b in torch.unique(batch["block"][i, noisy_idx]).tolist():
            slots = noisy_idx[batch["block"][i, noisy_idx] == b]
            prefix = clean_ids[: b * B]
            ids = torch.cat([prefix, batch["input_ids"][i, slots]])[None]
            L = ids.shape[1]
            pos = batch["position_ids"][:, i, :L][:, None]  # clean positions 0..L-1
            mask = block_causal_mask(torch.arange(L)[None] // B, torch.ones(1, L, dtype=torch.bool))
            logits = lm_logits(model, embed(model, ids, row_feats), pos, mask)[0, b * B :].double()
            m = batch["masked"][i, slots]
            ce = torch.nn.functional.cross_entropy(logits[m], batch["targets"][i, slots][m], reduction="none")
            total = total + (ce / batch["t"][i, slots][m].double()).sum()
    return total / int(batch["n_response"])


def test_rad_loss_equals_blockwise_decoding(parts, rows):
    model = parts.model.double().eval()
    try:
        stage = _stage()
        batch = stage.build_batch(rows[:3], parts, torch.Generator().manual_seed(1))
        batch.tensors["pixel_values"] = batch["pixel_values"].double()
        with torch.no_grad():
            loss, metrics = stage.loss(model, batch)
            ref = _blockwise_loss(model, parts, batch)
        assert metrics["masked_tokens"] > 0
        assert float(loss) == pytest.approx(float(ref), rel=1e-6, abs=1e-9)
    finally:
        parts.model.float()


def test_noisy_tokens_never_reach_clean_positions(parts, rows):
    model = parts.model.float().eval()
    stage = _stage()
    batch = stage.build_batch(rows[:2], parts, torch.Generator().manual_seed(2))
    from echo_ray.model.masks import rad_mask
    from echo_ray.train.stage import batch_embeds

    emb = batch_embeds(model, batch).detach().requires_grad_(True)
    mask = rad_mask(batch["block"], batch["is_noisy"], batch["valid"])
    logits = lm_logits(model, emb, batch["position_ids"], mask)
    clean = batch["valid"] & ~batch["is_noisy"]
    logits[clean].sum().backward()
    noisy = batch["valid"] & batch["is_noisy"]
    assert float(emb.grad[noisy].abs().max()) == 0.0
    assert float(emb.grad[clean].abs().max()) > 0.0
    # and perturbing noisy token ids (unmasking some, re-masking others) changes no clean output
    ids2 = batch["input_ids"].clone()
    ids2[noisy] = torch.where(batch["masked"][noisy], batch["targets"][noisy], torch.full_like(ids2[noisy], parts.mask_id))
    batch2 = type(batch)({**batch.tensors, "input_ids": ids2}, batch.study_ids, batch.n_tokens)
    with torch.no_grad():
        a = lm_logits(model, batch_embeds(model, batch), batch["position_ids"], mask)
        b = lm_logits(model, batch_embeds(model, batch2), batch["position_ids"], mask)
    assert torch.equal(a[clean], b[clean])
    assert not torch.equal(a[noisy], b[noisy])


def test_chinese_rows_and_limits(parts, rows):
    zh = dict(rows[0], language="zh", report="所见：心影大小正常。双肺清晰。 结论：未见急性心肺异常。", study_id="zh-1")
    batch = _stage().build_batch([zh, rows[1]], parts, torch.Generator().manual_seed(3))
    assert batch.study_ids == ["zh-1", rows[1]["study_id"]]
    with pytest.raises(InputError, match=r"study .*response has \d+ tokens.*max_response_tokens=4"):
        _stage(max_response=4).build_batch(rows[:1], parts, torch.Generator())
    with pytest.raises(InputError, match="empty report"):
        _stage().build_batch([dict(rows[0], report="")], parts, torch.Generator())


def test_activation_checkpointing_keeps_loss_and_gradients(tiny_ckpt_dir, rows):
    """The 7B preset trains with activation checkpointing; it must not change what is learned."""
    ckpt = load_checkpoint(str(tiny_ckpt_dir))
    model = ckpt.model.train()
    parts = ModelParts(model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, 8, PromptConfig())
    stage = _stage()
    batch = stage.build_batch(rows[:2], parts, torch.Generator().manual_seed(4))
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.zero_grad(set_to_none=True)
        loss, _ = stage.loss(model, batch)
        loss.backward()
        grads.append((float(loss), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    (l0, g0), (l1, g1) = grads
    assert l0 == pytest.approx(l1, rel=1e-6) and g0.keys() == g1.keys()
    assert all(torch.allclose(g0[n], g1[n], atol=1e-6) for n in g0)


def test_context_noise_changes_only_the_clean_response(parts, rows):
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    plain = _stage().build_batch(rows[:3], parts, gen())
    noisy_stage = RadStage(Limits(512, 256), NoiseConfig(t_min=0.3, t_max=0.8, context=0.3))
    mixed = noisy_stage.build_batch(rows[:3], parts, gen())
    changed = plain["input_ids"] != mixed["input_ids"]
    assert bool(changed.any()), "some clean response tokens are swapped"
    for i in range(3):
        valid, is_noisy = plain["valid"][i], plain["is_noisy"][i]
        clean_len = int((~is_noisy & valid).sum())
        n_noisy = int((is_noisy & valid).sum())
        prompt_end = clean_len - n_noisy + int((plain["t"][i] == 0)[clean_len:clean_len + n_noisy].sum())
        # never the prompt, never the noisy copy; each swapped token comes from its own block
        assert not bool(changed[i, :prompt_end].any()) and not bool(changed[i, clean_len:].any())
        for j in torch.nonzero(changed[i]).flatten().tolist():
            same_block = (plain["block"][i] == plain["block"][i, j]) & ~is_noisy & valid
            assert int(mixed["input_ids"][i, j]) in plain["input_ids"][i, same_block].tolist()
    # the noise is only in what later blocks see: the masking, the rates and the targets are unchanged
    for key in ("masked", "t", "targets"):
        assert torch.equal(plain[key], mixed[key])


def test_lm_logits_select_returns_the_selected_slots(parts, rows):
    """Losses read only their slots through the LM head; they must be the full forward's rows."""
    batch = _stage().build_batch(rows[:2], parts, torch.Generator().manual_seed(2))
    mask = rad_mask(batch["block"], batch["is_noisy"], batch["valid"])
    sel = batch["masked"].bool()
    with torch.no_grad():
        emb = batch_embeds(parts.model, batch)
        full = lm_logits(parts.model, emb, batch["position_ids"], mask)
        some = lm_logits(parts.model, emb, batch["position_ids"], mask, select=sel)
    assert some.shape == (int(sel.sum()), full.shape[-1])
    torch.testing.assert_close(some, full[sel], rtol=1e-5, atol=1e-5)

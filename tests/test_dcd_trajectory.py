"""DCD trajectories on the tiny model: record shapes, commit steps, targets vs. a recomputation from
the recorded partial block, the student's batch layout, and Parquet write/replay."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from echo_ray.config import DcdLossConfig, PromptConfig
from echo_ray.data.phantom import read_phantom
from echo_ray.errors import InputError
from echo_ray.model.forward import embed, extend_positions, image_features, lm_logits, prompt_positions
from echo_ray.model.masks import rad_mask
from echo_ray.train.dcd.loss import sharpen_targets
from echo_ray.train.dcd.stage import DcdStage, student_response
from echo_ray.train.dcd.store import TrajectoryWriter, count_trajectories, from_row, read_trajectories, to_row
from echo_ray.train.dcd.teacher import TeacherSpec, TeacherWorker
from echo_ray.train.dcd.trajectory import PromptTask
from echo_ray.train.examples import Limits
from echo_ray.train.rad_layout import rad_layout
from echo_ray.train.stage import ModelParts

S, K, B, MAX_NEW = 4, 16, 8, 24


@pytest.fixture(scope="module")
def worker(tiny_ckpt_dir):
    return TeacherWorker(TeacherSpec(str(tiny_ckpt_dir), steps=S, top_k=K, max_new_tokens=MAX_NEW))


@pytest.fixture(scope="module")
def tasks(phantom_dir):
    recs = read_phantom(phantom_dir)[:3]
    out = [PromptTask(f"t{i}", r["study_id"], "en", r["images"], r["report"]) for i, r in enumerate(recs)]
    out[1].images = out[1].images + out[0].images[:1]  # a longer prompt: different tails in one batch
    return out


@pytest.fixture(scope="module")
def result(worker, tasks):
    return worker.decode(tasks, round_index=3)


def test_record_shapes_and_commit_steps(worker, tasks, result) -> None:
    assert [r.uid for r in result.records] == [t.uid for t in tasks] and not result.failures
    for rec in result.records:
        P, R = rec.prompt_ids.shape[0], rec.response_len
        tail = P % B
        assert (P + R) % B == 0 and R >= MAX_NEW
        assert rec.topk_ids.shape == rec.topk_logprobs.shape == (R, K) and rec.topk_logmass.shape == (R,)
        assert rec.round == 3 and rec.steps == S and rec.block_size == B
        # renormalized top-K sums to one; the kept mass is a probability
        np.testing.assert_allclose(np.exp(rec.topk_logprobs).sum(-1), 1.0, atol=1e-5)
        assert (rec.topk_logmass <= 1e-6).all()
        assert (rec.topk_ids[:, 0] == rec.tokens).all(), "the committed token is the argmax"
        # every position is committed exactly once, at one step in 1..S; each full block uses steps 1..S
        steps = rec.commit_step
        first = B - tail
        assert sorted(set(steps[:first].tolist())) == list(range(1, min(S, first) + 1))
        for blk in steps[first:].reshape(-1, B):
            assert sorted(set(blk.tolist())) == list(range(1, S + 1))
            assert np.bincount(blk, minlength=S + 1)[1:].tolist() == [B // S] * S
        assert rec.hit_max and rec.eos_pos == -1  # the random tiny model never writes EOS


def _partial_block_logprobs(worker, rec, step: int, visible_before: int | None = None):
    """Teacher log-probs recomputed without any cache at the positions committed at `step`: every
    response block holds the tokens committed before `visible_before` (default: `step`) and MASK
    elsewhere, after the clean teacher prefix. Returns (response positions, (M, V) log-probs)."""
    c = worker.ckpt
    prompt = worker._prompt(rec.task)
    lay = rad_layout(prompt.input_ids, student_response(rec, c.eos_id), B)
    pos, delta = prompt_positions(c.model, prompt.input_ids, prompt.image_grid_thw)
    pos = extend_positions(pos, delta, lay.clean_len)[:, lay.source][:, None]
    slots = torch.nonzero(lay.candidate).flatten()
    j = lay.source[slots] - lay.prompt_len
    commit = torch.as_tensor(rec.commit_step)[j]
    ids = lay.ids.clone()
    ids[slots[commit >= (step if visible_before is None else visible_before)]] = c.mask_id
    mask = rad_mask(lay.block[None], lay.is_noisy[None], torch.ones_like(lay.is_noisy)[None])
    with torch.no_grad():
        feats = image_features(c.model, prompt.pixel_values, prompt.image_grid_thw)
        logits = lm_logits(c.model, embed(c.model, ids[None], feats), pos, mask)[0]
    logits[:, c.mask_id] = float("-inf")
    sel = commit == step
    return j[sel], torch.log_softmax(logits[slots[sel]], dim=-1)


def _recorded(rec, j: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.as_tensor(rec.topk_ids)[j].long()
    return ids, torch.as_tensor(rec.topk_logprobs)[j] + torch.as_tensor(rec.topk_logmass)[j][:, None]


def test_targets_equal_recomputed_partial_block(worker, result) -> None:
    for rec in result.records[:2]:
        seen = 0
        for step in range(1, S + 1):
            j, lp = _partial_block_logprobs(worker, rec, step)
            ids, want = _recorded(rec, j)
            torch.testing.assert_close(lp.gather(1, ids), want, atol=2e-4, rtol=0)
            assert torch.equal(lp.argmax(-1), ids[:, 0])
            seen += len(j)
        assert seen == rec.response_len
    # the comparison can fail: the all-MASK block (the student's view) gives other conditionals
    rec = result.records[0]
    j, lp = _partial_block_logprobs(worker, rec, S, visible_before=1)
    ids, want = _recorded(rec, j)
    assert float((lp.gather(1, ids) - want).abs().max()) > 1e-3


def test_student_batch_layout(worker, result) -> None:
    c = worker.ckpt
    parts = ModelParts(c.model, c.tokenizer, c.image_processor, c.mask_id, B, PromptConfig())
    cfg = DcdLossConfig(weight_schedule="linear", weight_strength=3.0, eos_weight=2.0)
    rec = result.records[0]
    # a record that ends with EOS inside its last block: EOS targets from there on
    eos_rec = from_row(to_row(rec))
    eos_rec.tokens = eos_rec.tokens.copy()
    eos_rec.eos_pos = eos_rec.response_len - 5
    eos_rec.tokens[eos_rec.eos_pos] = c.eos_id
    batch = DcdStage(Limits(2048, 256), cfg).build_batch([rec, eos_rec], parts, torch.Generator())
    for i, r in enumerate((rec, eos_rec)):
        noisy = batch["is_noisy"][i] & batch["valid"][i]
        cand = batch["masked"][i]
        assert int(cand.sum()) == r.response_len, "every response slot of the noisy copy is masked"
        assert (batch["input_ids"][i][noisy & ~cand] != c.mask_id).all(), "prompt tail stays visible"
        kl, eos = batch["kl_weight"][i][cand], batch["eos_weight"][i][cand]
        n_eos = r.response_len - r.eos_pos if r.eos_pos >= 0 else 0
        assert int((eos > 0).sum()) == n_eos and torch.all(eos[eos > 0] == 2.0)
        assert int((kl > 0).sum()) == r.response_len - n_eos
        w = torch.as_tensor(1.0 + 3.0 * (r.commit_step - 1) / (S - 1), dtype=torch.float32)
        torch.testing.assert_close(kl[: r.response_len - n_eos], w[: r.response_len - n_eos])
    loss, metrics = DcdStage(Limits(2048, 256), cfg).loss(c.model, batch)
    assert torch.isfinite(loss) and 0.0 <= metrics["tf_agreement"] <= 1.0 and metrics["eos_nll"] > 0
    # sharpened targets: the same slots carry the tempered teacher conditionals
    hot = DcdStage(Limits(2048, 256), replace(cfg, target_temperature=0.5)).build_batch([rec], parts, torch.Generator())
    cand = hot["masked"][0]
    want_lp, want_mass = sharpen_targets(torch.as_tensor(rec.topk_logprobs), torch.as_tensor(rec.topk_logmass), 0.5)
    torch.testing.assert_close(hot["topk_logprobs"][0][cand], want_lp)
    torch.testing.assert_close(hot["topk_logmass"][0][cand], want_mass)
    assert not torch.allclose(hot["topk_logprobs"][0][cand], batch["topk_logprobs"][0][cand])
    # context noise: only the clean response (the prefix later blocks see) changes; targets do not
    varied = from_row(to_row(rec))  # the random teacher repeats one token: give the prefix distinct ones
    varied.tokens = np.arange(10, 10 + varied.response_len, dtype=np.int32)
    varied.eos_pos = -1
    noisy_ctx = DcdStage(Limits(2048, 256), replace(cfg, context_noise=0.5)).build_batch([varied], parts, torch.Generator())
    clean = DcdStage(Limits(2048, 256), cfg).build_batch([varied], parts, torch.Generator())
    diff = noisy_ctx["input_ids"][0] != clean["input_ids"][0]
    slot = torch.arange(diff.shape[0])
    assert bool(diff.any()) and not bool((diff & (clean["is_noisy"][0] | (slot < rec.prompt_ids.shape[0]))).any())
    assert torch.equal(noisy_ctx["targets"], clean["targets"]) and torch.equal(noisy_ctx["topk_ids"], clean["topk_ids"])


def test_prompt_mismatch_is_an_error(worker, result) -> None:
    c = worker.ckpt
    parts = ModelParts(c.model, c.tokenizer, c.image_processor, c.mask_id, B, PromptConfig(system="Another system."))
    with pytest.raises(InputError, match="differs from the one the teacher decoded"):
        DcdStage(Limits(2048, 256), DcdLossConfig()).build_batch([result.records[0]], parts, torch.Generator())


def test_parquet_round_trip(tmp_path, result) -> None:
    w = TrajectoryWriter(tmp_path / "traj")
    w.write(result.records[:2], round_index=0)
    w.write(result.records[2:], round_index=1)
    assert count_trajectories(tmp_path / "traj") == 3
    back = list(read_trajectories(tmp_path / "traj"))
    assert [b.uid for b in back] == [r.uid for r in result.records]
    for a, b in zip(result.records, back):
        for name in ("prompt_ids", "tokens", "commit_step", "topk_ids", "topk_logprobs", "topk_logmass"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert (a.eos_pos, a.hit_max, a.steps, a.task.images) == (b.eos_pos, b.hit_max, b.steps, b.task.images)
    with pytest.raises(InputError, match="no trajectory Parquet"):
        count_trajectories(tmp_path)

"""The DCD loss (top-K + rest-bucket forward KL, commit-step weights, EOS term) and the step packer."""

from __future__ import annotations

import pytest
import torch

from echo_ray.train.dcd.loss import bucket_kl, commit_weights, dcd_loss, sharpen_targets
from echo_ray.train.dcd.stream import StepPacker, planned_steps
from echo_ray.train.dcd.trajectory import renormalize_topk

V, MASK, EOS, K = 50, 49, 2, 8


def _targets(teacher_logits: torch.Tensor, k: int = K):
    """Records as the teacher writes them: top-K of the MASK-free log-softmax, renormalized + mass."""
    logits = teacher_logits.clone()
    logits[..., MASK] = float("-inf")
    lp, ids = torch.log_softmax(logits, -1).topk(k, dim=-1)
    renorm, mass = renormalize_topk(lp)
    return ids, renorm, mass


def test_kl_zero_iff_student_matches_targets() -> None:
    g = torch.Generator().manual_seed(0)
    teacher = torch.randn(2, 6, V, generator=g) * 3
    ids, lp, mass = _targets(teacher)
    kl_w = torch.ones(2, 6)
    kl_w[1, 4:] = 0.0
    eos_w = torch.zeros(2, 6)
    same, _ = dcd_loss(teacher.clone(), ids, lp, mass, kl_w, eos_w, EOS, MASK)
    assert abs(float(same)) < 1e-5
    # any other student is penalized, including one that matches the renormalized top-K only
    moved = teacher.clone()
    moved.scatter_add_(-1, ids, torch.full(ids.shape, 1.0))  # same top-K ratios, more mass on the top-K
    for student in (teacher + torch.randn(teacher.shape, generator=g), moved):
        loss, parts = dcd_loss(student, ids, lp, mass, kl_w, eos_w, EOS, MASK)
        assert float(loss) > 1e-3 and parts["kl"] > 0
    # the student's MASK logit is irrelevant: MASK is never a token
    masked = teacher.clone()
    masked[..., MASK] = 100.0
    assert abs(float(dcd_loss(masked, ids, lp, mass, kl_w, eos_w, EOS, MASK)[0])) < 1e-5


def test_bucket_kl_is_a_lower_bound_of_the_full_kl() -> None:
    g = torch.Generator().manual_seed(1)
    p_logits, q_logits = torch.randn(20, V, generator=g) * 2, torch.randn(20, V, generator=g) * 2
    p_logits[:, MASK] = q_logits[:, MASK] = float("-inf")
    logp, logq = torch.log_softmax(p_logits, -1), torch.log_softmax(q_logits, -1)
    full = (logp.exp() * (logp - logq)).nan_to_num(0.0).sum(-1)
    for k in (1, 8, V - 2):
        ids, lp, mass = _targets(p_logits, k)
        b = bucket_kl(logq, ids, lp, mass)
        assert (b >= 0).all() and (b <= full + 1e-5).all()
    torch.testing.assert_close(bucket_kl(logq, *_targets(p_logits, V - 2)), full, atol=1e-4, rtol=1e-4)


def test_sharpened_targets_are_the_tempered_bucket_distribution() -> None:
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(5, V, generator=g) * 2
    ids, lp, mass = _targets(teacher)
    same = sharpen_targets(lp, mass, 1.0)
    assert same[0] is lp and same[1] is mass
    # by hand: the K + 1 bucket probabilities to the power 1/T, renormalized
    p = torch.cat([(lp + mass[:, None]).exp(), (1 - mass.exp())[:, None]], -1)
    want = p**2 / (p**2).sum(-1, keepdim=True)
    slp, smass = sharpen_targets(lp, mass, 0.5)
    torch.testing.assert_close(slp.exp().sum(-1), torch.ones(5))
    torch.testing.assert_close((slp + smass[:, None]).exp(), want[:, :K], atol=1e-5, rtol=1e-4)
    # T -> 0: a one-hot on the teacher's top id, the rest bucket emptied
    hlp, hmass = sharpen_targets(lp, mass, 0.02)
    assert (hlp.argmax(-1) == 0).all() and (hlp[:, 0].exp() > 0.999).all() and (hmass.exp() > 0.999).all()
    # a target holding all its mass in the K ids keeps an empty rest bucket
    full_ids, full_lp, full_mass = _targets(teacher, V - 1)
    assert torch.isfinite(sharpen_targets(full_lp, full_mass, 0.5)[0]).all()
    with pytest.raises(ValueError, match="temperature"):
        sharpen_targets(lp, mass, 0.0)


def test_gradient_pushes_student_toward_teacher() -> None:
    g = torch.Generator().manual_seed(2)
    teacher = torch.randn(1, 4, V, generator=g) * 3
    ids, lp, mass = _targets(teacher)
    student = torch.zeros(1, 4, V, requires_grad=True)
    opt = torch.optim.SGD([student], lr=5.0)
    w = torch.ones(1, 4)
    first = None
    for _ in range(100):
        loss, _ = dcd_loss(student, ids, lp, mass, w, torch.zeros(1, 4), EOS, MASK)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert torch.isfinite(student.grad).all()
    assert float(loss.detach()) < 0.05 * first


def test_weights_and_eos_term() -> None:
    steps = torch.tensor([1, 2, 3, 4])
    torch.testing.assert_close(commit_weights(steps, 4, "linear", 3.0), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    torch.testing.assert_close(commit_weights(steps, 4, "exp", 1.5), torch.exp(torch.tensor([0.0, 0.5, 1.0, 1.5])))
    assert torch.equal(commit_weights(steps, 4, "flat", 9.0), torch.ones(4))
    assert torch.equal(commit_weights(torch.tensor([1]), 1, "linear", 2.0), torch.ones(1))
    with pytest.raises(ValueError, match="strength"):
        commit_weights(steps, 4, "linear", -1.0)
    # normalization by the weights: (w1*kl1 + w_eos*nll) / (w1 + w_eos)
    g = torch.Generator().manual_seed(3)
    teacher = torch.randn(1, 2, V, generator=g)
    ids, lp, mass = _targets(teacher)
    student = teacher + torch.randn(teacher.shape, generator=g)
    kl_w, eos_w = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    loss, parts = dcd_loss(student, ids, lp, mass, kl_w, eos_w, EOS, MASK)
    s = student[0].clone()
    s[:, MASK] = float("-inf")
    logq = torch.log_softmax(s, -1)
    kl = bucket_kl(logq[:1], ids[0, :1], lp[0, :1], mass[0, :1])[0]
    expect = (3.0 * kl - 2.0 * logq[1, EOS]) / 5.0
    torch.testing.assert_close(loss, expect)
    assert parts["eos_slots"] == 1.0
    with pytest.raises(ValueError, match="both"):
        dcd_loss(student, ids, lp, mass, kl_w + 1, eos_w, EOS, MASK)
    with pytest.raises(ValueError, match="no supervised"):
        dcd_loss(student, ids, lp, mass, kl_w * 0, eos_w * 0, EOS, MASK)


@pytest.mark.parametrize("n,W,bs", [(9, 2, 1), (16, 2, 4), (17, 2, 4), (5, 3, 2), (64, 2, 4), (3, 2, 4)])
def test_step_packer_conserves_rows_and_feeds_every_worker(n, W, bs) -> None:
    packer = StepPacker(W, bs)
    steps = []
    for i in range(n):
        steps += packer.add([i])
    steps += packer.end_round()
    rows = [r for step in steps for part in step for r in part]
    assert sorted(rows) == list(range(n)), "every row exactly once"
    assert all(len(step) == W and all(part for part in step) for step in steps), "no worker gets an empty step"
    assert all(len(part) <= 2 * bs for step in steps for part in step)
    assert len(steps) == planned_steps(n, W, bs)
    assert packer.unassigned == 0


def test_step_packer_carries_a_round_smaller_than_the_workers() -> None:
    packer = StepPacker(num_workers=3, batch_size=2)
    assert packer.add([1, 2]) == [] and packer.end_round() == [] and packer.unassigned == 2
    steps = packer.add([3, 4, 5]) + packer.end_round()
    assert sorted(r for step in steps for part in step for r in part) == [1, 2, 3, 4, 5]

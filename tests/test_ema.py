"""The weight average (echo_ray.train.ema): its update rule, the in-place swap, save/load, and which
stages keep one by default (the engines' use of it: tests/test_backends.py)."""

from __future__ import annotations

import pytest
import torch

from echo_ray.config import DcdConfig, RadConfig
from echo_ray.errors import InputError
from echo_ray.train.ema import WeightAverage, averaged


def test_update_is_the_moving_average_from_the_initial_weights():
    w = torch.nn.Parameter(torch.zeros(3))
    ema = WeightAverage([w], decay=0.9)
    expected = torch.zeros(3)  # the initial weights, no bias correction
    for t in range(30):
        with torch.no_grad():
            w.add_(1.0)
        expected = 0.9 * expected + 0.1 * w.detach()
        ema.update()
        assert torch.allclose(ema.average[0], expected, atol=1e-5), t
    assert ema.updates == 30 and 0 < float(ema.average[0][0]) < float(w.detach()[0])  # behind the weights


def test_swapped_puts_the_average_in_and_restores_the_weights_exactly():
    torch.manual_seed(0)
    lin = torch.nn.Linear(4, 4)
    ema = WeightAverage(list(lin.parameters()), decay=0.5)
    with torch.no_grad():
        for p in lin.parameters():
            p.add_(torch.randn_like(p))
    ema.update()
    before = [p.detach().clone() for p in lin.parameters()]
    avg = [a.clone() for a in ema.average]
    with ema.swapped():
        assert all(torch.equal(p, a) for p, a in zip(lin.parameters(), avg))
    assert all(torch.equal(p, b) for p, b in zip(lin.parameters(), before))
    assert all(torch.equal(a, b) for a, b in zip(ema.average, avg))
    with pytest.raises(RuntimeError, match="inside"), ema.swapped():
        raise RuntimeError("inside")
    assert all(torch.equal(p, b) for p, b in zip(lin.parameters(), before))  # restored on errors too
    with averaged(None):  # no average: the weights as they are
        assert all(torch.equal(p, b) for p, b in zip(lin.parameters(), before))


def test_save_and_load_round_trip_and_refusals(tmp_path):
    lin = torch.nn.Linear(3, 2)
    ema = WeightAverage(list(lin.parameters()), decay=0.99)
    with torch.no_grad():
        lin.weight.add_(1.0)
    for _ in range(4):
        ema.update()
    ema.save(tmp_path)
    other = WeightAverage(list(torch.nn.Linear(3, 2).parameters()), decay=0.99)
    other.load(tmp_path)
    assert other.updates == 4 and all(torch.equal(a, b) for a, b in zip(other.average, ema.average))
    with pytest.raises(InputError, match="missing"):
        other.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match="holds 2 tensors, the model trains 1"):
        WeightAverage([torch.nn.Parameter(torch.zeros(2))], 0.9).load(tmp_path)
    with pytest.raises(ValueError, match="decay"):
        WeightAverage([], 1.0)


def test_dcd_averages_by_default_and_other_stages_do_not():
    assert DcdConfig().ema_decay == 0.99 and RadConfig().ema_decay == 0.0

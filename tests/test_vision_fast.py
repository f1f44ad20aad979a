"""fast_image_features equals HF's vision tower (float64), one and several images, several windows."""

from __future__ import annotations

import pytest
import torch

from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.forward import image_features
from echo_ray.model.vision_fast import fast_image_features, vision_plan


@pytest.fixture(scope="module")
def model(tiny_ckpt_dir):
    return load_checkpoint(str(tiny_ckpt_dir)).model.double().eval()


def _pixels(model, grid: torch.Tensor) -> torch.Tensor:
    pe = model.model.visual.patch_embed
    n = int(grid.prod(-1).sum())
    return torch.randn(n, pe.in_channels * pe.temporal_patch_size * pe.patch_size**2, dtype=torch.float64)


@pytest.mark.parametrize("grid", [[[1, 8, 8]], [[1, 8, 8], [1, 4, 6]], [[1, 20, 12]]])
def test_fast_image_features_match_hf(model, grid) -> None:
    torch.manual_seed(0)
    g = torch.tensor(grid)
    px = _pixels(model, g)
    with torch.no_grad():
        want = image_features(model, px, g)
    for _ in range(2):  # second call runs on the cached plan
        got = fast_image_features(model, px, g)
        assert got.shape == want.shape
        assert torch.allclose(got, want, rtol=0, atol=1e-10), (got - want).abs().max()
    plan = vision_plan(model.model.visual, g, torch.float64)
    assert plan is vision_plan(model.model.visual, g.clone(), torch.float64)  # one plan per grid
    assert (plan.full_mask is not None) == (len(grid) > 1)  # images attend only within themselves
    assert (plan.window_mask is not None) == (grid != [[1, 8, 8]])  # 4x4 merged tokens per window

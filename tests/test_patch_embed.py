"""The matmul patch embedding equals the HF Conv3d one (float64) and the switch is idempotent."""

from __future__ import annotations

import copy

import torch

from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.model.forward import image_features
from echo_ray.model.patch_embed import LinearPatchEmbed, use_linear_patch_embed


def test_linear_patch_embed_matches_conv(tiny_ckpt_dir) -> None:
    conv = load_checkpoint(str(tiny_ckpt_dir)).model.double()
    lin = copy.deepcopy(conv)
    use_linear_patch_embed(lin)
    use_linear_patch_embed(lin)  # idempotent
    assert type(lin.model.visual.patch_embed) is LinearPatchEmbed
    assert type(conv.model.visual.patch_embed) is not LinearPatchEmbed
    assert lin.state_dict().keys() == conv.state_dict().keys()
    pe = conv.model.visual.patch_embed
    torch.manual_seed(0)
    n = 2 * 16  # two 4x4-patch images
    px = torch.randn(n, pe.in_channels * pe.temporal_patch_size * pe.patch_size**2, dtype=torch.float64)
    assert torch.allclose(lin.model.visual.patch_embed(px), pe(px), rtol=0, atol=1e-12)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    with torch.no_grad():
        want, got = image_features(conv, px, grid), image_features(lin, px, grid)
    assert got.shape == want.shape and torch.allclose(got, want, rtol=0, atol=1e-12)

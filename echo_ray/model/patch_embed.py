"""The vision tower's patch embedding as one matmul, for the decoders (engine and `collate_prompts`).

Qwen2.5-VL embeds patches with a `Conv3d` whose kernel equals its stride and covers the whole
(channels, temporal, height, width) patch, so each output is one dot product of a flattened patch
with a flattened filter: `F.linear(patches, weight.view(embed_dim, -1))` (same weights, same state
dict). On CPU the oneDNN convolution costs ~0.4 ms for one 64-patch image while the matmul costs
~0.03 ms. Applied by switching the module's class in place (idempotent); training keeps the
convolution (DeepSpeed ZeRO-3 gathers `proj.weight` only when `proj` itself is called).

Usage:
    use_linear_patch_embed(model)   # then model.model.visual(...) as before
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionPatchEmbed


class LinearPatchEmbed(Qwen2_5_VisionPatchEmbed):
    """`Qwen2_5_VisionPatchEmbed` computing its convolution as a matmul (kernel == stride)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        w = self.proj.weight  # (embed_dim, C, T, P, P)
        x = hidden_states.to(w.dtype).reshape(-1, w[0].numel())  # rows in the (C, T, P, P) order of the view HF uses
        return F.linear(x, w.view(w.shape[0], -1))


def use_linear_patch_embed(model) -> None:
    """Switch `model`'s vision patch embedding to `LinearPatchEmbed` (no-op if already, or if absent)."""
    pe = getattr(getattr(model.model, "visual", None), "patch_embed", None)
    if type(pe) is Qwen2_5_VisionPatchEmbed and pe.proj.bias is None and pe.proj.kernel_size == pe.proj.stride:
        pe.__class__ = LinearPatchEmbed

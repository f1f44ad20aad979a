"""Collate prompts for block decoding: left padding by whole blocks so block edges line up.

Row i has P_i prompt tokens: F_i = P_i // B full blocks and a tail of t_i = P_i % B tokens that
shares the first decode block with the response (method.md, "Blocks"). With K = max F_i, row i is
left-padded by (K - F_i) * B columns, so every row's first decode block sits at columns
[K*B, K*B + B), and column // B differs from the row's own block index by a per-row constant,
which the block-causal masks ignore. The prefill covers columns [0, K*B); the tails go into the
first decode block as fixed (never re-predicted) tokens. With B = 1 this is ordinary left padding,
used by the AR decoder.

Usage:
    batch = collate_prompts(model, prompts, block_size=8, pad_id=tok.pad_token_id, mask_id=mask_id)
    batch.positions(start_col, length)   # (3, N, length) M-RoPE ids for any column range
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from echo_ray.model.forward import embed, extend_positions, prompt_positions
from echo_ray.model.vision_fast import fast_image_features
from echo_ray.model.prompt import StudyPrompt


@dataclass
class PromptBatch:
    """Block-aligned prompts. N rows; K*B prefill columns; B-wide first decode block."""

    block_size: int
    prefix_ids: torch.Tensor  # (N, K*B) long, pad where ~prefix_valid
    prefix_valid: torch.Tensor  # (N, K*B) bool
    first_block: torch.Tensor  # (N, B) long: prompt tail, then MASK
    first_fixed: torch.Tensor  # (N, B) bool: True on prompt-tail slots
    prompt_lengths: list[int]
    pad: list[int]  # left padding per row (a multiple of B)
    image_feats: torch.Tensor | None  # (sum image tokens, H), in row order
    _pos_prompt: list[torch.Tensor]  # per row (3, P_i)
    _pos_delta: list[int]

    @property
    def n_rows(self) -> int:
        return self.prefix_ids.shape[0]

    @property
    def prefix_len(self) -> int:
        return self.prefix_ids.shape[1]

    def positions(self, start: int, length: int) -> torch.Tensor:
        """M-RoPE ids of columns [start, start+length) for every row -> (3, N, length)."""
        rows = []
        for pos, delta, pad in zip(self._pos_prompt, self._pos_delta, self.pad):
            local = extend_positions(pos, delta, max(0, start + length - pad))
            full = torch.cat([torch.zeros(3, pad, dtype=local.dtype, device=local.device), local], dim=1)
            rows.append(full[:, start : start + length])
        return torch.stack(rows, dim=1)

    def column_blocks(self, start: int, length: int) -> torch.Tensor:
        """Block index of columns [start, start+length) -> (N, length)."""
        cols = torch.arange(start, start + length, device=self.prefix_ids.device)
        return (cols // self.block_size)[None].expand(self.n_rows, -1)

    def prefix_embeds(self, model) -> torch.Tensor:
        """Embeddings of the prefill columns with image features scattered in. (N, K*B, H)."""
        return embed(model, self.prefix_ids, self.image_feats)


def collate_prompts(model, prompts: list[StudyPrompt], block_size: int, pad_id: int, mask_id: int) -> PromptBatch:
    """Left-pad `prompts` by whole blocks and encode their images once."""
    if not prompts:
        raise ValueError("collate_prompts needs at least one prompt")
    B = block_size
    full = [p.length // B for p in prompts]
    K = max(full)
    n = len(prompts)
    device = model.device
    prefix = torch.full((n, K * B), pad_id, dtype=torch.long)
    valid = torch.zeros((n, K * B), dtype=torch.bool)
    first = torch.full((n, B), mask_id, dtype=torch.long)
    fixed = torch.zeros((n, B), dtype=torch.bool)
    pads, pos_prompt, deltas = [], [], []
    for i, p in enumerate(prompts):
        pad = (K - full[i]) * B
        cut = full[i] * B
        prefix[i, pad:] = p.input_ids[:cut]
        valid[i, pad:] = True
        tail = p.input_ids[cut:]
        first[i, : len(tail)] = tail
        fixed[i, : len(tail)] = True
        pads.append(pad)
        pos, delta = prompt_positions(model, p.input_ids.to(device), p.image_grid_thw.to(device))
        pos_prompt.append(pos)
        deltas.append(delta)
    if any(bool((first[i][fixed[i]] == model.config.image_token_id).any()) for i in range(n)):
        raise ValueError(f"block size {B} is longer than the text after the last image; use a smaller block")
    with torch.no_grad():
        feats = fast_image_features(  # as the engine: the same vision work on both decoders
            model, torch.cat([p.pixel_values for p in prompts]).to(device), torch.cat([p.image_grid_thw for p in prompts]).to(device)
        )
    return PromptBatch(
        block_size=B,
        prefix_ids=prefix.to(device),
        prefix_valid=valid.to(device),
        first_block=first.to(device),
        first_fixed=fixed.to(device),
        prompt_lengths=[p.length for p in prompts],
        pad=pads,
        image_feats=feats,
        _pos_prompt=pos_prompt,
        _pos_delta=deltas,
    )

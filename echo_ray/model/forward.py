"""The one place that calls into transformers' Qwen2.5-VL internals: vision, embeddings, LM forward.

Training and every decoder go through these functions with explicit M-RoPE position ids and an
explicit boolean mask (echo_ray.model.masks), so the block-diffusion attention is the same
everywhere. The language model receives a custom 4D additive mask, which transformers passes to
the attention kernel unchanged.

Usage:
    feats = image_features(model, pixel_values, grid_thw)        # (T_img, H)
    emb = embed(model, input_ids, feats)                         # (N, L, H)
    pos, delta = prompt_positions(model, ids_row, grid_row)      # (3, P), int
    logits = lm_logits(model, emb, position_ids, mask)           # (N, L, V)
    logits = lm_logits(model, emb, position_ids, mask, select=sel)  # (K, V): the K slots a loss reads
"""

from __future__ import annotations

import torch

from echo_ray.model.masks import to_additive


def image_features(model, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
    """Vision tower + merger. pixel_values: (patches, D); grid_thw: (n, 3) -> (sum T_i, H)."""
    core = model.model
    out = core.get_image_features(pixel_values.to(core.visual.dtype), grid_thw, return_dict=True)
    return torch.cat(list(out.pooler_output), dim=0)


def embed(model, input_ids: torch.Tensor, image_feats: torch.Tensor | None = None) -> torch.Tensor:
    """Token embeddings with image placeholders replaced, in row-major order. (N, L) -> (N, L, H)."""
    emb = model.get_input_embeddings()(input_ids)
    if image_feats is None:
        return emb
    slots = input_ids == model.config.image_token_id
    n_slots = int(slots.sum())
    if n_slots != image_feats.shape[0]:
        raise ValueError(f"{n_slots} image placeholder tokens but {image_feats.shape[0]} image features")
    return emb.masked_scatter(slots[..., None].expand_as(emb), image_feats.to(emb.dtype))


def prompt_positions(model, input_ids: torch.Tensor, grid_thw: torch.Tensor) -> tuple[torch.Tensor, int]:
    """M-RoPE ids of one unpadded prompt. input_ids: (P,) -> ((3, P) long, delta).

    Text after the prompt continues on all three axes at ``index + delta``.
    """
    ids = input_ids[None]
    mm = (ids == model.config.image_token_id).int()
    pos, delta = model.model.get_rope_index(ids, mm, image_grid_thw=grid_thw)
    return pos[:, 0], int(delta.reshape(-1)[0])


def extend_positions(prompt_pos: torch.Tensor, delta: int, total: int) -> torch.Tensor:
    """Positions for a row of `total` tokens whose first P are the prompt. (3, P) -> (3, total)."""
    p = prompt_pos.shape[1]
    if total <= p:
        return prompt_pos[:, :total]
    tail = torch.arange(p, total, device=prompt_pos.device) + delta
    return torch.cat([prompt_pos, tail[None].expand(3, -1)], dim=1)


def lm_logits(
    model,
    inputs_embeds: torch.Tensor,
    position_ids: torch.Tensor,
    mask: torch.Tensor,
    cache=None,
    select: torch.Tensor | None = None,
) -> torch.Tensor:
    """Language model forward with an explicit mask.

    inputs_embeds: (N, Lq, H); position_ids: (3, N, Lq); mask: bool (N, Lq, Lk) where Lk = cached +
    Lq. With `cache` (a transformers DynamicCache) the new keys/values are appended to it.
    Returns logits (N, Lq, V) in float32; with `select` (bool (N, Lq)) only the selected slots,
    (K, V) in row-major order. Training losses read a fraction of the slots (CPT the response, RAD
    the masked ones); the others need no vocabulary projection (tiny-preset CPT step: ~9 % less
    forward + backward time in isolation).
    """
    out = model.model.language_model(
        inputs_embeds=inputs_embeds,
        position_ids=position_ids,
        attention_mask=to_additive(mask, inputs_embeds.dtype),
        cache=cache,
        use_cache=cache is not None,
    )
    hidden = out.last_hidden_state
    return model.lm_head(hidden if select is None else hidden[select]).float()

"""Stage 2, RAD: response-asymmetric block diffusion (method.md, "Stage 2: RAD").

Per row: pad the response with EOS to a block multiple, lay out ``[prompt | clean | noisy]``
(`rad_layout`), give noisy slots the M-RoPE ids of the clean positions they copy, draw one rate
t ~ U(t_min, t_max) per noisy block and mask response tokens with it (`sample_block_noise`), and
run one forward under `rad_mask` (block-causal among prompt+clean; a noisy block sees earlier
clean blocks and itself; nothing sees a noisy slot except its own block). The loss is `rad_loss`:
sum of CE / t over masked slots, no token shift, over the number of response tokens. Rows are
right-padded to the longest row; padding is never attended to and never scored. With
`noise.context` > 0 some clean-copy response tokens are swapped within their block
(`mix_block_tokens`) while the targets stay the report's, so the teacher learns to continue after
a slipped block rather than only after clean ones (the prefixes its multi-step decode, and the DCD
student's one-step decode, actually produce).

Usage:
    stage = RadStage(Limits(2048, 256), NoiseConfig(t_min=0.3, t_max=0.8))
    batch = stage.build_batch(rows, parts, torch.Generator().manual_seed(0))
    loss, metrics = stage.loss(model, batch.to(device))
"""

from __future__ import annotations

import torch

from echo_ray.config import NoiseConfig
from echo_ray.errors import InputError
from echo_ray.model.forward import extend_positions, lm_logits, prompt_positions
from echo_ray.model.masks import rad_mask
from echo_ray.train.examples import Example, Limits, PromptCache, check_lengths, encode_row
from echo_ray.train.losses import rad_loss
from echo_ray.train.noise import mix_block_tokens, sample_block_noise
from echo_ray.train.rad_layout import RadLayout, pad_response, rad_layout
from echo_ray.train.stage import Batch, ModelParts, batch_embeds


def collate_rad(
    stacked: dict[str, torch.Tensor],
    layouts: list[RadLayout],
    positions: list[torch.Tensor],
    masked: torch.Tensor,
    t: torch.Tensor,
    mask_id: int,
) -> dict[str, torch.Tensor]:
    """Apply the noise to stacked rows and attach position ids.

    stacked: `stack_layouts` output; positions[i]: (3, T_i) clean M-RoPE ids of row i; masked, t:
    (N, Lmax) from the noise sampler. Returns input_ids (masked slots = MASK), targets (clean ids),
    valid, block, is_noisy, masked (N, Lmax); t (N, Lmax) float; position_ids (3, N, Lmax);
    n_response () long.
    """
    pos = torch.zeros((3, len(layouts), stacked["valid"].shape[1]), dtype=torch.long)
    for i, (lay, p) in enumerate(zip(layouts, positions)):
        pos[:, i, : lay.length] = p[:, lay.source]
    if bool((masked & ~stacked["candidate"]).any()):
        raise ValueError("noise masked a slot that is not a noisy response token")
    ids = torch.where(masked, torch.full_like(stacked["targets"], mask_id), stacked["targets"])
    return {
        "input_ids": ids,
        "targets": stacked["targets"],
        "valid": stacked["valid"],
        "block": stacked["block"],
        "is_noisy": stacked["is_noisy"],
        "masked": masked,
        "t": t,
        "position_ids": pos,
        "n_response": torch.tensor(sum(lay.response_len for lay in layouts)),
    }


def stack_layouts(layouts: list[RadLayout], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad layouts to (N, Lmax): targets, valid, block, is_noisy, candidate."""
    n, L = len(layouts), max(lay.length for lay in layouts)
    out = {
        "targets": torch.full((n, L), pad_id, dtype=torch.long),
        "valid": torch.zeros((n, L), dtype=torch.bool),
        "block": torch.zeros((n, L), dtype=torch.long),
        "is_noisy": torch.zeros((n, L), dtype=torch.bool),
        "candidate": torch.zeros((n, L), dtype=torch.bool),
    }
    for i, lay in enumerate(layouts):
        m = lay.length
        out["targets"][i, :m] = lay.ids
        out["valid"][i, :m] = True
        out["block"][i, :m] = lay.block
        out["is_noisy"][i, :m] = lay.is_noisy
        out["candidate"][i, :m] = lay.candidate
    return out


def clean_response(stacked: dict[str, torch.Tensor], layouts: list[RadLayout]) -> torch.Tensor:
    """(N, Lmax) bool: the clean copy's response slots (what later blocks see as their prefix)."""
    prompt_len = torch.tensor([lay.prompt_len for lay in layouts])[:, None]
    slot = torch.arange(stacked["valid"].shape[1])[None, :]
    return stacked["valid"] & ~stacked["is_noisy"] & (slot >= prompt_len)


def layout_example(ex: Example, parts: ModelParts) -> tuple[RadLayout, torch.Tensor]:
    """RAD layout and clean M-RoPE ids (3, T) of one example."""
    B = parts.block_size
    P = ex.prompt.length
    lay = rad_layout(ex.prompt.input_ids, pad_response(ex.response, P, B, parts.eos_id), B)
    tail = lay.ids[lay.clean_len : lay.clean_len + P - lay.noisy_start]
    if bool((tail == parts.image_token_id).any()):
        raise InputError(f"study {ex.study_id}: block size {B} reaches into the image tokens of the prompt")
    pos, delta = prompt_positions(parts.model, ex.prompt.input_ids, ex.prompt.image_grid_thw)
    return lay, extend_positions(pos, delta, lay.clean_len)


class RadStage:
    """Block-diffusion training on the asymmetric layout."""

    name = "rad"

    def __init__(self, limits: Limits, noise: NoiseConfig, prompts: PromptCache | None = None):
        self.limits, self.noise, self.prompts = limits, noise, prompts

    def build_batch(self, rows: list[dict], parts: ModelParts, generator: torch.Generator) -> Batch:
        examples = []
        for row in rows:
            ex = encode_row(row, parts.tokenizer, parts.image_processor, parts.prompt, self.limits.raw, self.prompts)
            check_lengths(ex, self.limits, where="train.rad")
            examples.append(ex)
        laid = [layout_example(ex, parts) for ex in examples]
        layouts = [lay for lay, _ in laid]
        stacked = stack_layouts(layouts, parts.pad_id)
        masked, t = sample_block_noise(stacked["block"], stacked["candidate"], self.noise.t_min, self.noise.t_max, generator)
        tensors = collate_rad(stacked, layouts, [p for _, p in laid], masked, t, parts.mask_id)
        if self.noise.context > 0:
            tensors["input_ids"] = mix_block_tokens(tensors["input_ids"], stacked["block"], clean_response(stacked, layouts),
                                                    self.noise.context, generator)  # fmt: skip
        tensors["pixel_values"] = torch.cat([ex.prompt.pixel_values for ex in examples])
        tensors["image_grid_thw"] = torch.cat([ex.prompt.image_grid_thw for ex in examples])
        return Batch(tensors, [ex.study_id for ex in examples], n_tokens=sum(lay.length for lay in layouts))

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = rad_mask(batch["block"], batch["is_noisy"], batch["valid"])
        masked = batch["masked"].bool()
        logits = lm_logits(model, batch_embeds(model, batch), batch["position_ids"], mask, select=masked)
        loss = rad_loss(logits, batch["targets"][masked], masked[masked], batch["t"][masked], int(batch["n_response"]))
        n_masked = float(masked.sum())
        return loss, {"masked_tokens": n_masked, "mask_fraction": n_masked / max(1.0, float(batch["n_response"]))}

"""DcdStage: the student's training rows and loss, a stage of the shared training loop.

method.md, "Stage 3: DCD", phase 2. One row per teacher trajectory, in the RAD layout
(`echo_ray.train.rad_layout`): ``[prompt | teacher response (clean) | noisy copy]`` where the noisy
copy is fully masked (only the prompt tail of its first block is kept), so every block of the row
trains in one forward, each seeing the teacher's earlier blocks as its clean prefix, exactly the
view the one-step decoder has. The clean response is the teacher's tokens cut at its first EOS and
padded with EOS to the block edge (nothing attends to the clean copy of the last block, so what
the teacher committed after EOS there does not matter); without an EOS it is the whole decode.
On-policy records (`on_policy`) bring their clean copy: the student's own one-step report, with
the teacher's conditionals given it as the targets.

With `context_noise` > 0 some tokens of the clean copy (the prefix later blocks see) are replaced by
another token of their block (`echo_ray.train.noise.mix_block_tokens`) while the targets stay the
teacher's: the one-step student sees its own kind of slip in training and learns to recover from it
instead of compounding it over the following blocks.

Targets on noisy slot j (response position j): before the first EOS, the teacher's top-K
conditional with weight w(s_j); from the first EOS on, EOS with weight w_eos (`loss.dcd_loss`).

The student rebuilds each prompt from the record's images and language with its own tokenizer,
image processor and prompt config, and checks the ids against the ones the teacher saw: a mismatch
(different tokenizer or prompt template) is an InputError naming the study, never silent.

Usage:
    stage = DcdStage(Limits(2048, 256), DcdLossConfig())
    batch = stage.build_batch(records, parts, generator)     # the teacher's TrajectoryRecords
    loss, metrics = stage.loss(model, batch.to(device))
"""

from __future__ import annotations

import numpy as np
import torch

from echo_ray.config import DcdLossConfig
from echo_ray.errors import InputError
from echo_ray.model.forward import extend_positions, lm_logits, prompt_positions
from echo_ray.model.masks import rad_mask
from echo_ray.train.dcd.loss import commit_weights, dcd_loss, sharpen_targets
from echo_ray.train.dcd.trajectory import TrajectoryRecord
from echo_ray.train.examples import Limits, PromptCache
from echo_ray.train.noise import mix_block_tokens
from echo_ray.train.rad import clean_response, collate_rad, stack_layouts
from echo_ray.train.rad_layout import RadLayout, pad_response, rad_layout
from echo_ray.train.stage import Batch, ModelParts, batch_embeds

TARGET_KEYS = ("topk_ids", "topk_logprobs", "topk_logmass", "kl_weight", "eos_weight")


def student_response(rec: TrajectoryRecord, eos_id: int) -> torch.Tensor:
    """The clean copy: the student's report for on-policy records, else the teacher's tokens up to the
    first EOS, EOS-padded to the block edge. -> (R,)."""
    if rec.context is not None:
        return torch.as_tensor(rec.context, dtype=torch.long)
    toks = torch.as_tensor(rec.tokens, dtype=torch.long)
    if rec.eos_pos < 0:
        return toks
    cut = torch.cat([toks[: rec.eos_pos], torch.tensor([eos_id])])
    return pad_response(cut, int(rec.prompt_ids.shape[0]), rec.block_size, eos_id)


def slot_targets(rec: TrajectoryRecord, lay: RadLayout, cfg: DcdLossConfig) -> dict[str, torch.Tensor]:
    """Per-slot targets of one row (zeros off the noisy response slots).

    Returns topk_ids (L, K) long, topk_logprobs (L, K), topk_logmass (L,), kl_weight (L,),
    eos_weight (L,) float32.
    """
    L, K, P = lay.length, rec.top_k, lay.prompt_len
    slots = torch.nonzero(lay.candidate).flatten()
    j = lay.source[slots] - P  # response position of each noisy response slot
    if int(j.max()) >= rec.response_len:
        raise InputError(f"trajectory {rec.uid}: layout reaches past the teacher's {rec.response_len} positions")
    eos_part = j >= rec.eos_pos if rec.eos_pos >= 0 else torch.zeros_like(j, dtype=torch.bool)
    w = commit_weights(torch.as_tensor(rec.commit_step)[j].long(), rec.steps, cfg.weight_schedule, cfg.weight_strength)
    out = {
        "topk_ids": torch.zeros((L, K), dtype=torch.long),
        "topk_logprobs": torch.zeros((L, K), dtype=torch.float32),
        "topk_logmass": torch.zeros(L, dtype=torch.float32),
        "kl_weight": torch.zeros(L, dtype=torch.float32),
        "eos_weight": torch.zeros(L, dtype=torch.float32),
    }
    out["topk_ids"][slots] = torch.as_tensor(rec.topk_ids)[j].long()
    lp, mass = sharpen_targets(torch.as_tensor(rec.topk_logprobs)[j], torch.as_tensor(rec.topk_logmass)[j], cfg.target_temperature)
    out["topk_logprobs"][slots] = lp
    out["topk_logmass"][slots] = mass
    out["kl_weight"][slots] = torch.where(eos_part, torch.zeros_like(w), w)
    out["eos_weight"][slots] = eos_part.float() * float(cfg.eos_weight)
    return out


def stack_targets(per_row: list[dict[str, torch.Tensor]], length: int) -> dict[str, torch.Tensor]:
    """Right-pad per-row targets to (N, length[, K])."""
    out = {}
    for key in TARGET_KEYS:
        first = per_row[0][key]
        t = torch.zeros((len(per_row), length, *first.shape[1:]), dtype=first.dtype)
        for i, row in enumerate(per_row):
            t[i, : row[key].shape[0]] = row[key]
        out[key] = t
    return out


class DcdStage:
    """Student rows from teacher trajectories; weighted forward KL + EOS loss."""

    name = "dcd"

    def __init__(self, limits: Limits, cfg: DcdLossConfig, prompts: PromptCache | None = None):
        self.limits, self.cfg = limits, cfg
        self.prompts = prompts or PromptCache(0)

    def _prompt(self, rec: TrajectoryRecord, parts: ModelParts):
        paths = [im["path"] for im in rec.task.images]
        prompt = self.prompts.get(paths, rec.task.language, parts.tokenizer, parts.image_processor, parts.prompt)
        if not np.array_equal(prompt.input_ids.numpy(), rec.prompt_ids):
            raise InputError(
                f"study {rec.task.study_id}: the student's prompt ({prompt.length} tokens) differs from the one the "
                f"teacher decoded ({rec.prompt_ids.shape[0]} tokens); teacher and student must share tokenizer, "
                "image processor and prompt config"
            )
        if prompt.length > self.limits.max_prompt_tokens or rec.response_len > self.limits.max_response_tokens:
            raise InputError(
                f"study {rec.task.study_id}: prompt {prompt.length} / response {rec.response_len} tokens exceed "
                f"train.dcd.max_prompt_tokens={self.limits.max_prompt_tokens} / max_response_tokens="
                f"{self.limits.max_response_tokens}"
            )
        return prompt

    def build_batch(self, recs: list[TrajectoryRecord], parts: ModelParts, generator: torch.Generator) -> Batch:
        B = parts.block_size
        if any(r.block_size != B for r in recs) or len({r.top_k for r in recs}) != 1:
            raise InputError(f"trajectories in one batch must share the student's block size {B} and one top-K width")
        prompts, layouts, positions, targets = [], [], [], []
        for rec in recs:
            prompt = self._prompt(rec, parts)
            lay = rad_layout(prompt.input_ids, student_response(rec, parts.eos_id), B)
            pos, delta = prompt_positions(parts.model, prompt.input_ids, prompt.image_grid_thw)
            prompts.append(prompt)
            layouts.append(lay)
            positions.append(extend_positions(pos, delta, lay.clean_len))
            targets.append(slot_targets(rec, lay, self.cfg))
        stacked = stack_layouts(layouts, parts.pad_id)
        masked = stacked["candidate"].clone()  # the noisy copy is fully masked
        tensors = collate_rad(stacked, layouts, positions, masked, masked.float(), parts.mask_id)
        del tensors["t"]
        if self.cfg.context_noise > 0:
            tensors["input_ids"] = mix_block_tokens(tensors["input_ids"], stacked["block"], clean_response(stacked, layouts),
                                                    self.cfg.context_noise, generator)  # fmt: skip
        tensors.update(stack_targets(targets, stacked["valid"].shape[1]))
        tensors["pixel_values"] = torch.cat([p.pixel_values for p in prompts])
        tensors["image_grid_thw"] = torch.cat([p.image_grid_thw for p in prompts])
        extra = {"eos_id": parts.eos_id, "mask_id": parts.mask_id, "produced_at": [r.produced_at for r in recs]}
        return Batch(tensors, [r.task.study_id for r in recs], n_tokens=sum(lay.length for lay in layouts), extra=extra)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        mask = rad_mask(batch["block"], batch["is_noisy"], batch["valid"])
        sup = (batch["kl_weight"] > 0) | (batch["eos_weight"] > 0)
        logits = lm_logits(model, batch_embeds(model, batch), batch["position_ids"], mask, select=sup)  # (M, V)
        eos_id, mask_id = int(batch.extra["eos_id"]), int(batch.extra["mask_id"])
        loss, parts = dcd_loss(logits, batch["topk_ids"][sup], batch["topk_logprobs"][sup], batch["topk_logmass"][sup],
                               batch["kl_weight"][sup], batch["eos_weight"][sup], eos_id, mask_id)  # fmt: skip
        with torch.no_grad():
            pred = logits.detach().clone()
            pred[:, mask_id] = float("-inf")
            agree = float((pred.argmax(-1) == batch["targets"][sup]).float().mean())
        return loss, {"kl": parts["kl"], "eos_nll": parts["eos_nll"], "tf_agreement": agree}


def dcd_stage(job) -> DcdStage:
    """Factory for the loop's stage registry (echo_ray.train.job.STAGES): the student's loss weights."""
    return DcdStage(job.limits, job.cfg.loss, PromptCache(job.cfg.prompt_cache_mb))

"""Stage 1, CPT: autoregressive next-token cross-entropy on the response only (method.md).

Each row is ``[prompt | response + EOS]``, right-padded to the longest row of the batch. The LM
runs with a token-causal mask (`causal_mask`) and M-RoPE ids from the prompt (`prompt_positions`,
text after it continuing at index + delta), through `echo_ray.model.forward` like every decoder.
Labels use the standard shift: the logit at position i is scored against token i + 1, for the
response tokens (EOS included) only. Output is ECHO_AR, an ordinary causal VLM checkpoint.

Usage:
    stage = CptStage(Limits(2048, 256))
    batch = stage.build_batch(rows, parts, generator)     # CPU tensors
    loss, metrics = stage.loss(model, batch.to(device))
"""

from __future__ import annotations

import torch

from echo_ray.model.forward import extend_positions, lm_logits, prompt_positions
from echo_ray.model.masks import causal_mask
from echo_ray.train.examples import Example, Limits, PromptCache, check_lengths, encode_row
from echo_ray.train.losses import IGNORE_INDEX, ar_loss
from echo_ray.train.stage import Batch, ModelParts, batch_embeds


def collate_ar(examples: list[Example], positions: list[torch.Tensor], pad_id: int) -> Batch:
    """Right-padded AR batch.

    positions[i]: (3, P_i + R_i) M-RoPE ids of row i. Returns tensors input_ids, labels, valid
    (N, L); position_ids (3, N, L); pixel_values, image_grid_thw (rows' images concatenated).
    """
    lengths = [ex.prompt.length + int(ex.response.numel()) for ex in examples]
    n, L = len(examples), max(lengths)
    ids = torch.full((n, L), pad_id, dtype=torch.long)
    labels = torch.full((n, L), IGNORE_INDEX, dtype=torch.long)
    valid = torch.zeros((n, L), dtype=torch.bool)
    pos = torch.zeros((3, n, L), dtype=torch.long)
    for i, (ex, p, length) in enumerate(zip(examples, positions, lengths)):
        P = ex.prompt.length
        ids[i, :length] = torch.cat([ex.prompt.input_ids, ex.response])
        labels[i, P - 1 : length - 1] = ex.response  # logit at j predicts token j + 1
        valid[i, :length] = True
        pos[:, i, :length] = p
    tensors = {
        "input_ids": ids,
        "labels": labels,
        "valid": valid,
        "position_ids": pos,
        "pixel_values": torch.cat([ex.prompt.pixel_values for ex in examples]),
        "image_grid_thw": torch.cat([ex.prompt.image_grid_thw for ex in examples]),
    }
    return Batch(tensors, [ex.study_id for ex in examples], n_tokens=sum(lengths))


class CptStage:
    """AR continued pre-training on [images + instruction -> report]."""

    name = "cpt"

    def __init__(self, limits: Limits, prompts: PromptCache | None = None):
        self.limits, self.prompts = limits, prompts

    def build_batch(self, rows: list[dict], parts: ModelParts, generator: torch.Generator) -> Batch:
        examples, positions = [], []
        for row in rows:
            ex = encode_row(row, parts.tokenizer, parts.image_processor, parts.prompt, self.limits.raw, self.prompts)
            check_lengths(ex, self.limits, where="train.cpt")
            pos, delta = prompt_positions(parts.model, ex.prompt.input_ids, ex.prompt.image_grid_thw)
            examples.append(ex)
            positions.append(extend_positions(pos, delta, ex.prompt.length + int(ex.response.numel())))
        return collate_ar(examples, positions, parts.pad_id)

    def loss(self, model, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        valid = batch["valid"]
        cols = torch.arange(valid.shape[1], device=valid.device)[None].expand_as(valid)
        labelled = batch["labels"] != IGNORE_INDEX
        logits = lm_logits(model, batch_embeds(model, batch), batch["position_ids"], causal_mask(cols, valid),
                           select=labelled)  # fmt: skip
        loss = ar_loss(logits, batch["labels"][labelled])
        return loss, {"response_tokens": float(labelled.sum())}

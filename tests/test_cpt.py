"""CPT stage: response-only next-token loss equals transformers' own loss on the same row."""

from __future__ import annotations

import pytest
import torch

from echo_ray.config import PromptConfig
from echo_ray.data.phantom_dataset import phantom_rows
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.train.cpt import CptStage
from echo_ray.train.examples import Limits
from echo_ray.train.losses import IGNORE_INDEX
from echo_ray.train.stage import ModelParts


@pytest.fixture(scope="module")
def parts(tiny_ckpt_dir):
    ckpt = load_checkpoint(str(tiny_ckpt_dir))
    return ModelParts(ckpt.model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, 8, PromptConfig())


def test_labels_cover_response_only(parts, phantom_dir):
    rows = phantom_rows(phantom_dir)[:2]
    batch = CptStage(Limits(512, 256)).build_batch(rows, parts, torch.Generator())
    for i, row in enumerate(rows):
        labels = batch["labels"][i]
        ids = batch["input_ids"][i]
        sel = labels != IGNORE_INDEX
        # label at j is token j + 1, and the labelled tokens are exactly the report + EOS
        assert torch.equal(labels[sel], ids[1:][sel[:-1]])
        text = parts.tokenizer.decode(labels[sel][:-1])
        assert text.strip() == row["report"].strip()
        assert int(labels[sel][-1]) == parts.eos_id


def test_loss_matches_transformers_forward(parts, phantom_dir):
    """Our explicit-mask, explicit-M-RoPE forward is the model's own causal LM on an unpadded row."""
    row = phantom_rows(phantom_dir)[3]
    stage = CptStage(Limits(512, 256))
    batch = stage.build_batch([row], parts, torch.Generator())
    model = parts.model.eval()
    with torch.no_grad():
        ours, metrics = stage.loss(model, batch)
        hf_labels = torch.full_like(batch["input_ids"], IGNORE_INDEX)
        hf_labels[:, 1:] = batch["labels"][:, :-1]  # HF shifts inside its loss
        ids = batch["input_ids"]
        # mm_token_type_ids makes transformers compute its own M-RoPE ids (without them it uses 1-D ones)
        ref = model(input_ids=ids, pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                    mm_token_type_ids=(ids == model.config.image_token_id).int(), labels=hf_labels).loss  # fmt: skip
    assert metrics["response_tokens"] == int((batch["labels"] != IGNORE_INDEX).sum())
    assert float(ours) == pytest.approx(float(ref), rel=1e-5)


def test_padding_does_not_change_row_loss(parts, phantom_dir):
    rows = phantom_rows(phantom_dir)
    stage = CptStage(Limits(512, 256))
    with torch.no_grad():
        alone = stage.loss(parts.model, stage.build_batch([rows[0]], parts, torch.Generator()))[0]
        both = stage.build_batch([rows[0], rows[1]], parts, torch.Generator())
        n0 = int((both["labels"][0] != IGNORE_INDEX).sum())
        n1 = int((both["labels"][1] != IGNORE_INDEX).sum())
        other = stage.loss(parts.model, stage.build_batch([rows[1]], parts, torch.Generator()))[0]
        joint = stage.loss(parts.model, both)[0]
    assert float(joint) == pytest.approx((float(alone) * n0 + float(other) * n1) / (n0 + n1), rel=1e-5)

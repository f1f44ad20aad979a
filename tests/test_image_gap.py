"""Image-conditioning gap probe: image-to-row bookkeeping, the swap, and the measured gap."""

from __future__ import annotations

import pytest
import torch

from echo_ray.config import NoiseConfig, PromptConfig
from echo_ray.data.phantom_dataset import phantom_rows
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.train.cpt import CptStage
from echo_ray.train.examples import Limits
from echo_ray.train.image_gap import ImageGapProbe, images_per_row, swap_batch_images, swap_partners
from echo_ray.train.rad import RadStage
from echo_ray.train.stage import ModelParts

IMG = 7


def test_images_per_row_counts_placeholders() -> None:
    grid = torch.tensor([[1, 4, 4], [1, 4, 4], [1, 2, 4], [1, 4, 4]])  # 4, 4, 2, 4 tokens at merge 2
    ids = torch.zeros((3, 12), dtype=torch.long)
    ids[0, :8] = IMG  # two images
    ids[1, :2] = IMG  # the small one
    ids[2, 3:7] = IMG
    assert images_per_row(ids, grid, IMG, merge=2) == [2, 1, 1]
    with pytest.raises(ValueError, match="whole images"):
        images_per_row(ids[:, :7] * 0 + torch.tensor([IMG] * 6 + [0]), grid, IMG, merge=2)


def test_swap_partners_only_within_equal_signatures() -> None:
    partner = swap_partners([("a",), ("b",), ("a",), ("a",), ("c",)])
    assert partner[1] == 1 and partner[4] == 4  # no partner: keeps its images
    assert sorted(partner[i] for i in (0, 2, 3)) == [0, 2, 3] and all(partner[i] != i for i in (0, 2, 3))


@pytest.fixture(scope="module")
def parts(tiny_ckpt_dir):
    ckpt = load_checkpoint(str(tiny_ckpt_dir))
    return ModelParts(ckpt.model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, 8, PromptConfig())


def _merge(parts) -> int:
    return int(parts.model.config.vision_config.spatial_merge_size)


def test_swapped_batches_move_whole_images_between_rows(parts, phantom_dir) -> None:
    rows = phantom_rows(phantom_dir)[:6]
    stage = CptStage(Limits(512, 256))
    batches = [stage.build_batch(rows[:3], parts, torch.Generator()), stage.build_batch(rows[3:], parts, torch.Generator())]
    swapped, n = swap_batch_images(batches, parts.image_token_id, _merge(parts))
    counts = [c for b in batches for c in images_per_row(b["input_ids"], b["image_grid_thw"], parts.image_token_id,
                                                         _merge(parts))]  # fmt: skip
    assert n == sum(counts.count(k) for k in set(counts) if counts.count(k) > 1) and n >= 2
    for b, s in zip(batches, swapped):
        assert s["pixel_values"].shape == b["pixel_values"].shape
        for key in ("input_ids", "labels", "position_ids", "image_grid_thw"):
            assert s[key] is b[key]  # only the pixels change
    before = torch.cat([b["pixel_values"] for b in batches]).reshape(-1, 64 * 1176)  # per image (8x8 patches)
    after = torch.cat([s["pixel_values"] for s in swapped]).reshape(-1, 64 * 1176)
    assert sorted(map(tuple, before[:, :5].tolist())) == sorted(map(tuple, after[:, :5].tolist()))
    assert not torch.equal(before, after)


def test_rows_swap_across_micro_batches_of_one_row(parts, phantom_dir) -> None:
    """Batch size 1 (DCD's test setting): the probe still swaps, between its micro-batches."""
    rows = [r for r in phantom_rows(phantom_dir) if len(r["images"]) == 1][:2]
    stage = CptStage(Limits(512, 256))
    batches = [stage.build_batch([r], parts, torch.Generator()) for r in rows]
    swapped, n = swap_batch_images(batches, parts.image_token_id, _merge(parts))
    assert n == 2 and torch.equal(swapped[0]["pixel_values"], batches[1]["pixel_values"])


@pytest.mark.parametrize("stage", [CptStage(Limits(512, 256)), RadStage(Limits(512, 256), NoiseConfig())])
def test_probe_measures_the_gap(parts, phantom_dir, stage) -> None:
    rows = phantom_rows(phantom_dir)
    probe = ImageGapProbe(every=5, n_batches=2, image_token_id=parts.image_token_id, merge=_merge(parts))
    for k in range(3):  # only the first two micro-batches are kept
        probe.collect([stage.build_batch(rows[4 * k : 4 * k + 4], parts, torch.Generator().manual_seed(k))])
    assert len(probe.true) == len(probe.swapped) == 2 and probe.rows >= 2
    assert [probe.due(s, 12) for s in (4, 5, 10, 11, 12)] == [False, True, True, False, True]
    out = probe.measure(stage, parts.model, step=5)
    assert out["image_gap"] == pytest.approx(out["loss_swapped_images"] - out["loss_true_images"])
    assert out["image_gap"] != 0.0  # the random tiny model's loss still depends on the pixels
    assert out["image_gap_rows"] == probe.rows
    assert probe.history == [{"step": 5.0, **out}]
    off = ImageGapProbe(every=0, n_batches=2, image_token_id=parts.image_token_id, merge=_merge(parts))
    off.collect(probe.true)
    assert not off.true and not off.due(10, 10)

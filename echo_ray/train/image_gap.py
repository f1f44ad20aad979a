"""The image-conditioning gap of a stage's own loss: does the model use the image it is given?

On a fixed probe (the first `image_gap_batches` micro-batches this rank trains on, kept for the
whole run; a resumed run takes the first ones after the restart), every `image_gap_every` steps and at the last step, the stage's loss is computed twice
without gradients: with the true images and with each row's images replaced by another row's
(`swap_batch_images`). Everything else in the batch is the same tensors (token ids, positions,
masks, noise, DCD targets), so the difference is the image alone:

    image_gap = loss(swapped images) - loss(true images)     (> 0: the images help the loss)

Rows swap (across the probe's micro-batches) only with rows whose images have the same patch
grids (same number of images, same sizes), so the prompt's image-token layout is unchanged; a row
with no such partner keeps its images (`image_gap_rows` counts the swapped ones). The losses are
averaged over the probe batches of all ranks, weighted by rows, and
go into the step's metrics (TensorBoard `<stage>/image_gap`, metrics.jsonl, `ray.train.report`,
so the final result carries the last one) and into `<output_dir>/image_gap.json` (the history).

Usage (echo_ray.train.loop does this):
    probe = ImageGapProbe(every=50, n_batches=2, image_token_id=tid, merge=2)
    probe.collect(micro)                               # every step; keeps the first batches
    if probe.due(step, max_steps): metrics.update(probe.measure(stage, model))
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from echo_ray.train.stage import Batch

GAP_KEYS = ("image_gap", "loss_true_images", "loss_swapped_images", "image_gap_rows")


def images_per_row(input_ids: torch.Tensor, grid_thw: torch.Tensor, image_token_id: int, merge: int) -> list[int]:
    """How many of the batch's images (in order) belong to each row.

    input_ids: (N, L); grid_thw: (n_images, 3). An image takes t*h*w / merge**2 placeholder tokens.
    """
    per_row = (input_ids == image_token_id).sum(dim=1).tolist()
    tokens = (grid_thw.prod(dim=1) // (merge * merge)).tolist()
    counts, k = [], 0
    for need in per_row:
        start = k
        while need > 0:
            if k >= len(tokens):
                raise ValueError("image placeholders and image_grid_thw do not match")
            need -= tokens[k]
            k += 1
        if need != 0:
            raise ValueError("a row's image placeholders do not add up to whole images")
        counts.append(k - start)
    if k != len(tokens):
        raise ValueError(f"{len(tokens)} images but the rows' placeholders cover {k}")
    return counts


def swap_partners(signatures: list[tuple]) -> list[int]:
    """partner[i]: the row whose images row i gets; rows with equal signatures rotate by one, a row
    with no equal partner keeps its own (partner[i] == i)."""
    groups: dict[tuple, list[int]] = {}
    for i, sig in enumerate(signatures):
        groups.setdefault(sig, []).append(i)
    partner = list(range(len(signatures)))
    for rows in groups.values():
        if len(rows) > 1:
            for a, b in zip(rows, rows[1:] + rows[:1]):
                partner[a] = b
    return partner


def _row_images(batch: Batch, image_token_id: int, merge: int) -> list[tuple[tuple, torch.Tensor]]:
    """(grid signature, pixel_values slice) of each row of `batch`."""
    grid = batch["image_grid_thw"]
    counts = images_per_row(batch["input_ids"], grid, image_token_id, merge)
    patches = [0] + torch.cumsum(grid.prod(dim=1), 0).tolist()
    out, k = [], 0
    for c in counts:
        out.append((tuple(map(tuple, grid[k : k + c].tolist())), batch["pixel_values"][patches[k] : patches[k + c]]))
        k += c
    return out


def swap_batch_images(batches: list[Batch], image_token_id: int, merge: int) -> tuple[list[Batch], int]:
    """Copies of `batches` whose pixel_values give each row another row's images (from any of the
    batches); returns (batches, rows swapped)."""
    rows = [r for b in batches for r in _row_images(b, image_token_id, merge)]
    partner = swap_partners([sig if sig else ("no image", i) for i, (sig, _) in enumerate(rows)])
    out, i = [], 0
    for b in batches:
        n = b.n_rows
        pieces = [rows[partner[j]][1] for j in range(i, i + n)]
        pixels = torch.cat(pieces) if pieces else b["pixel_values"]
        out.append(Batch({**b.tensors, "pixel_values": pixels}, b.study_ids, b.n_tokens, b.extra))
        i += n
    return out, sum(p != j for j, p in enumerate(partner))


class ImageGapProbe:
    """Keeps the probe batches of one rank and measures the gap (module doc)."""

    def __init__(self, every: int, n_batches: int, image_token_id: int, merge: int):
        self.every, self.n_batches = every, n_batches
        self.image_token_id, self.merge = image_token_id, merge
        self.true: list[Batch] = []
        self.swapped: list[Batch] = []
        self.rows = 0  # rows whose images were swapped (per rank)
        self.history: list[dict[str, float]] = []

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.n_batches > 0

    def collect(self, micro: list[Batch]) -> None:
        """Keep the first `n_batches` micro-batches; once complete, build their swapped copies."""
        if not self.enabled or len(self.true) >= self.n_batches:
            return
        self.true.extend(micro[: self.n_batches - len(self.true)])
        if len(self.true) == self.n_batches:
            self.swapped, self.rows = swap_batch_images(self.true, self.image_token_id, self.merge)

    def due(self, step: int, max_steps: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == max_steps)

    @torch.no_grad()
    def measure(self, stage: Any, model: Any, step: int) -> dict[str, float]:
        """Losses with true and swapped images over the probe batches of all ranks (row-weighted)."""
        if not self.swapped and self.true:  # a run shorter than the probe: use what there is
            self.swapped, self.rows = swap_batch_images(self.true, self.image_token_id, self.merge)
        device = self.true[0]["input_ids"].device if self.true else torch.device("cpu")
        # [sum of batch losses x rows, true and swapped images; swapped rows; rows weighed]
        sums = torch.zeros(4, dtype=torch.float64, device=device)
        for true, swapped in zip(self.true, self.swapped):  # every rank runs the same forwards (ZeRO-3)
            w = true.n_rows if self.rows else 0
            sums[0] += w * float(stage.loss(model, true)[0])
            sums[1] += w * float(stage.loss(model, swapped)[0])
            sums[3] += w
        sums[2] += self.rows
        if dist.is_initialized():
            dist.all_reduce(sums)
        if float(sums[2]) == 0:
            return {"image_gap_rows": 0.0}
        weight = float(sums[3])
        out = {"loss_true_images": float(sums[0]) / weight, "loss_swapped_images": float(sums[1]) / weight,
               "image_gap_rows": float(sums[2])}  # fmt: skip
        out["image_gap"] = out["loss_swapped_images"] - out["loss_true_images"]
        self.history.append({"step": float(step), **out})
        return out

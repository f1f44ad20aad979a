"""The image-conditioning gap of a stage's own loss: does the model use the image it is given?

On a fixed probe (the first `image_gap_batches` micro-batches this rank trains on, kept for the
whole run), every `image_gap_every` steps and at the last step, the stage's loss is computed twice
without gradients: with the true images and with each row's images replaced by another row's
(`swap_batch_images`). Everything else in the batch is the same tensors (token ids, positions,
masks, noise, DCD targets), so the difference is the image alone:

    image_gap = loss(swapped images) - loss(true images)     (> 0: the images help the loss)

Rows swap only with rows whose images have the same patch grids (same number of images, same
sizes), so the prompt's image-token layout is unchanged; a row with no such partner keeps its
images and is not counted. The figures are averaged over ranks (weighted by swapped rows) and
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


def swap_batch_images(batch: Batch, image_token_id: int, merge: int) -> tuple[Batch, int]:
    """A copy of `batch` whose pixel_values give each row another row's images; (batch, rows swapped)."""
    grid = batch["image_grid_thw"]
    counts = images_per_row(batch["input_ids"], grid, image_token_id, merge)
    first = [sum(counts[:i]) for i in range(len(counts))]
    sigs = [tuple(map(tuple, grid[f : f + c].tolist())) if c else None for f, c in zip(first, counts)]
    partner = swap_partners([s if s is not None else ("no image", i) for i, s in enumerate(sigs)])
    patches = grid.prod(dim=1).tolist()
    offsets = [sum(patches[:j]) for j in range(len(patches) + 1)]
    pieces = []
    for i, p in enumerate(partner):  # rows in order, each with its partner's patches
        pieces.append(batch["pixel_values"][offsets[first[p]] : offsets[first[p] + counts[p]]])
    pixels = torch.cat(pieces) if pieces else batch["pixel_values"]
    swapped = sum(p != i for i, p in enumerate(partner))
    return Batch({**batch.tensors, "pixel_values": pixels}, batch.study_ids, batch.n_tokens, batch.extra), swapped


class ImageGapProbe:
    """Keeps the probe batches of one rank and measures the gap (module doc)."""

    def __init__(self, every: int, n_batches: int, image_token_id: int, merge: int):
        self.every, self.n_batches = every, n_batches
        self.image_token_id, self.merge = image_token_id, merge
        self.pairs: list[tuple[Batch, Batch, int]] = []
        self.history: list[dict[str, float]] = []

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.n_batches > 0

    def collect(self, micro: list[Batch]) -> None:
        for b in micro:
            if self.enabled and len(self.pairs) < self.n_batches:
                swapped, n = swap_batch_images(b, self.image_token_id, self.merge)
                self.pairs.append((b, swapped, n))

    def due(self, step: int, max_steps: int) -> bool:
        return self.enabled and (step % self.every == 0 or step == max_steps)

    @torch.no_grad()
    def measure(self, stage: Any, model: Any, step: int) -> dict[str, float]:
        """Losses with true and swapped images, averaged over swapped rows of all ranks."""
        device = self.pairs[0][0]["input_ids"].device if self.pairs else torch.device("cpu")
        sums = torch.zeros(3, dtype=torch.float64, device=device)  # sum n*true, sum n*swapped, sum n
        for true, swapped, n in self.pairs:  # every rank runs the same forwards (ZeRO-3 gathers in them)
            sums[0] += n * float(stage.loss(model, true)[0])
            sums[1] += n * float(stage.loss(model, swapped)[0])
            sums[2] += n
        if dist.is_initialized():
            dist.all_reduce(sums)
        rows = float(sums[2])
        if rows == 0:
            return {"image_gap_rows": 0.0}
        out = {"loss_true_images": float(sums[0]) / rows, "loss_swapped_images": float(sums[1]) / rows,
               "image_gap_rows": rows}  # fmt: skip
        out["image_gap"] = out["loss_swapped_images"] - out["loss_true_images"]
        self.history.append({"step": float(step), **out})
        return out

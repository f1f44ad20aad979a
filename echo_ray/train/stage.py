"""The contract between the shared training loop and a stage (CPT, RAD, and DCD later).

A stage turns a list of dataset rows into a `Batch` of CPU tensors (`build_batch`, run inside the
worker, where images are read and processed) and computes its loss from a model and a batch
(`loss`). The loop never looks inside a batch except to move it to the device and count tokens.
`StageModule` wraps model + stage into one `nn.Module` whose `forward(batch)` returns the loss, so
DeepSpeed and DDP see an ordinary forward (their hooks need the call to go through the wrapper).

Every stage reaches the network only through echo_ray.model.forward (`image_features`, `embed`,
`lm_logits`) with explicit M-RoPE position ids and boolean masks, the convention decoders share.

Usage:
    class MyStage:  # satisfies Stage
        name = "mine"
        def build_batch(self, rows, parts, generator) -> Batch: ...
        def loss(self, model, batch) -> tuple[torch.Tensor, dict[str, float]]: ...
    module = StageModule(parts.model, MyStage())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from echo_ray.config import PromptConfig
from echo_ray.model.checkpoint import TokenIds
from echo_ray.model.forward import embed, image_features


@dataclass
class ModelParts(TokenIds):
    """What batch building needs from the loaded checkpoint (the model only for M-RoPE indexing)."""

    model: Any  # Qwen2_5_VLForConditionalGeneration (unwrapped)
    tokenizer: Any
    image_processor: Any
    mask_id: int | None  # None only for CPT from an AR model without a MASK token
    block_size: int
    prompt: PromptConfig

    @property
    def image_token_id(self) -> int:
        return int(self.model.config.image_token_id)


@dataclass
class Batch:
    """One micro-batch. Stages choose the tensor keys; `n_tokens` = LM input slots that are real."""

    tensors: dict[str, torch.Tensor]
    study_ids: list[str]
    n_tokens: int
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def to(self, device: torch.device | str) -> "Batch":
        moved = {k: v.to(device, non_blocking=True) for k, v in self.tensors.items()}
        return Batch(moved, self.study_ids, self.n_tokens, self.extra)

    @property
    def n_rows(self) -> int:
        return len(self.study_ids)


@runtime_checkable
class Stage(Protocol):
    """What the loop needs from a training stage."""

    name: str

    def build_batch(self, rows: list, parts: ModelParts, generator: torch.Generator) -> Batch:
        """Rows (normalized dataset dicts; DCD: TrajectoryRecords) -> CPU batch. `generator` drives any noise."""
        ...

    def loss(self, model: Any, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss (graph attached) and a few float metrics for logging."""
        ...


class StageModule(nn.Module):
    """model + stage as one module: `forward(batch) -> (loss, metrics)`."""

    def __init__(self, model: nn.Module, stage: Stage):
        super().__init__()
        self.model = model
        self.stage = stage

    def forward(self, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return self.stage.loss(self.model, batch)


def batch_embeds(model: Any, batch: Batch) -> torch.Tensor:
    """Token embeddings of `batch['input_ids']` with the batch's image features scattered in.

    Uses the keys input_ids (N, L), pixel_values (patches, D), image_grid_thw (n, 3). -> (N, L, H).
    """
    feats = image_features(model, batch["pixel_values"], batch["image_grid_thw"])
    return embed(model, batch["input_ids"], feats)

"""Training checkpoints: an HF-loadable model plus everything needed to resume.

Layout of one checkpoint directory (merged by Ray Train from every rank's files):
    model/              save_pretrained safetensors + config.json (with the MASK id and block
                        size, `write_echo_meta`) + tokenizer + preprocessor_config.json   (rank 0)
    engine/             optimizer / scheduler / (ZeRO-partitioned) weights for resume (all ranks)
    train_state.json    {"step", "epoch", "batches"}: the step counter and data position (rank 0)

Usage:
    write_checkpoint(engine, parts, TrainState(step=10, position=pos), Path(tmp))   # every rank
    state = restore_checkpoint(engine, Path(ckpt_dir))                              # every rank
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_ray.errors import InputError
from echo_ray.model.checkpoint import write_echo_meta
from echo_ray.train.backends import TrainEngine
from echo_ray.train.data import DataPosition
from echo_ray.train.stage import ModelParts

MODEL_DIR = "model"
ENGINE_DIR = "engine"
TRAIN_STATE = "train_state.json"


@dataclass
class TrainState:
    step: int = 0
    position: DataPosition = field(default_factory=DataPosition)

    def to_json(self) -> str:
        return json.dumps({"step": self.step, **self.position.as_dict()})

    @classmethod
    def from_json(cls, text: str) -> "TrainState":
        d = json.loads(text)
        return cls(step=int(d["step"]), position=DataPosition(int(d["epoch"]), int(d["batches"])))


def export_hf(model: Any, state_dict: dict, parts: ModelParts, out_dir: Path) -> Path:
    """Save `state_dict` as an HF checkpoint of `model`'s architecture, with tokenizer and processor."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_echo_meta(model.config, parts.mask_id, parts.block_size)
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    parts.tokenizer.save_pretrained(out_dir)
    parts.image_processor.save_pretrained(out_dir)
    return out_dir


def write_checkpoint(engine: TrainEngine, parts: ModelParts, state: TrainState, out_dir: Path) -> None:
    """Every rank calls this (engine state and ZeRO-3 gathers are collective)."""
    engine.save_state(out_dir / ENGINE_DIR)
    sd = engine.export_state_dict()
    if sd is not None:
        export_hf(engine.hf_model, sd, parts, out_dir / MODEL_DIR)
        (out_dir / TRAIN_STATE).write_text(state.to_json(), encoding="utf-8")


def restore_checkpoint(engine: TrainEngine, ckpt_dir: Path) -> TrainState:
    """Load engine state and return the step counter and data position saved with it."""
    state_file = ckpt_dir / TRAIN_STATE
    if not state_file.is_file():
        raise InputError(f"not a training checkpoint (no {TRAIN_STATE}): {ckpt_dir}")
    engine.load_state(ckpt_dir / ENGINE_DIR)
    return TrainState.from_json(state_file.read_text(encoding="utf-8"))

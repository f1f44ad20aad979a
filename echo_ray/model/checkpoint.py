"""Load and save ECHO checkpoints (HF Qwen2.5-VL layout, safetensors only) from disk or s3://.

A checkpoint is a directory with `config.json` (+ `echo` metadata: the MASK token id and the block
size it was trained with), `*.safetensors` weights, the tokenizer files, and
`preprocessor_config.json`. Pickle weights (`*.bin`, `*.pt`, `*.pkl`, `*.pth`) are refused: loading
them runs arbitrary code. Base VLMs without `<|mask|>` get it added and their embeddings resized.

Usage:
    ckpt = load_checkpoint("runs/rad/final")            # or "s3://bucket/echo-base"
    ckpt.model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, ckpt.block_size
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from echo_ray.errors import InputError
from echo_ray.model.tokenizer import ensure_mask_token
from echo_ray.storage import resolve_local

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TokenIds:
    """EOS and PAD ids of an object that holds a `tokenizer` (checkpoints, training model parts)."""

    tokenizer: Any

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)


@dataclass
class Checkpoint(TokenIds):
    model: Qwen2_5_VLForConditionalGeneration
    tokenizer: PreTrainedTokenizerBase
    image_processor: Qwen2VLImageProcessorPil
    mask_id: int | None
    block_size: int | None
    path: Path


def write_echo_meta(
    config: Any, mask_token_id: int | None, block_size: int | None, languages: list[str] | None = None
) -> None:
    """Store the MASK id, block size and (when known) training languages on the HF config."""
    config.echo_mask_token_id = mask_token_id
    config.echo_block_size = block_size
    if languages is not None:
        config.echo_languages = sorted(set(languages))


def read_echo_meta(config: Any) -> tuple[int | None, int | None]:
    return getattr(config, "echo_mask_token_id", None), getattr(config, "echo_block_size", None)


def check_checkpoint_dir(path: Path) -> None:
    """Clear errors for a missing directory, no weights, or pickle-only weights."""
    if not path.is_dir():
        raise InputError(f"checkpoint directory not found: {path}")
    if not (path / "config.json").is_file():
        raise InputError(f"not a model checkpoint (no config.json): {path}")
    safes = list(path.glob("*.safetensors"))
    pickles = [p for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if not safes and pickles:
        raise InputError(
            f"refusing pickle checkpoint {pickles[0]}: only safetensors weights are loaded "
            "(convert it with save_pretrained(..., safe_serialization=True))"
        )
    if not safes:
        raise InputError(f"no *.safetensors weights in {path}")


def load_checkpoint(
    path: str,
    dtype: str = "float32",
    attn_implementation: str = "sdpa",
    cache_dir: str = "~/.cache/echo_ray/models",
    device: str | torch.device = "cpu",
) -> Checkpoint:
    """Load model, tokenizer and image processor; adds `<|mask|>` to base models that lack it."""
    local = resolve_local(path, cache_dir)
    check_checkpoint_dir(local)
    try:
        tokenizer = AutoTokenizer.from_pretrained(local)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(local)
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            local, dtype=DTYPES[dtype], attn_implementation=attn_implementation, use_safetensors=True
        )
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load checkpoint {local}: {str(e).splitlines()[0]}") from None
    mask_id, block_size = read_echo_meta(model.config)
    if mask_id is None:
        mask_id, added = ensure_mask_token(tokenizer)
        if added or mask_id >= model.get_input_embeddings().weight.shape[0]:
            model.resize_token_embeddings(len(tokenizer))
        write_echo_meta(model.config, mask_id, block_size)
    tokenizer.padding_side = "left"
    model.to(device).eval()
    return Checkpoint(model, tokenizer, image_processor, mask_id, block_size, local)


def save_checkpoint(ckpt_model: Any, tokenizer: Any, image_processor: Any, out_dir: str | Path) -> Path:
    """Save weights (safetensors), tokenizer and image processor into one HF-loadable directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out

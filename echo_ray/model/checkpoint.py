"""Load and save ECHO checkpoints (HF Qwen2.5-VL layout, safetensors only) from disk or s3://.

A checkpoint is a directory with `config.json` (+ `echo` metadata: the MASK token id and the block
size it was trained with), `*.safetensors` weights, the tokenizer files, and
`preprocessor_config.json`. The published ECHO layout (MASK id in `config.mask_token_id` or as a
`<|MASK|>` token, no block size) loads too (echo_ray.model.published). Pickle weights (`*.bin`,
`*.pt`, `*.pkl`, `*.pth`) are refused: loading them runs arbitrary code; so is remote code, and
weights that do not fit the stock Qwen2.5-VL class are an error naming the keys. Only the RAD
training init (`add_mask_token=True`) adds a `<|mask|>` to an AR base model and resizes its
embeddings; decoding a checkpoint without a MASK id is an error (echo_ray.decode.generator).

Every caller (training stages, DCD teacher actors, eval, serve, generate, the importer) passes the
run's one `ModelConfig` (dtype, attention, cache, image bounds) and a device; "auto" is resolved
by `resolve_device`, the one place that picks a device.

Usage:
    ckpt = load_checkpoint("runs/rad/final")            # or "s3://bucket/echo-base"
    ckpt.model, ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, ckpt.block_size
    load_checkpoint("ECHO_block8", ModelConfig(dtype="bfloat16", max_pixels=2_250_000), "auto")  # published layout
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import logging

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from echo_ray.config import ModelConfig
from echo_ray.errors import InputError
from echo_ray.model.published import block_size_from_name, check_weight_keys, find_mask_id
from echo_ray.model.tokenizer import ensure_mask_token
from echo_ray.storage import resolve_local

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


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
    block_size: int | None  # recorded in the checkpoint's metadata
    path: Path
    name_block_size: int | None = None  # from a `_block4` / `_block8` name suffix (published models)

    @property
    def trained_block_size(self) -> int | None:
        """The recorded block size, else the one the checkpoint's name says."""
        return self.block_size if self.block_size is not None else self.name_block_size


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


def set_pixel_bounds(image_processor: Any, max_pixels: int | None = None, min_pixels: int | None = None) -> None:
    """Bound the resized image area (pixels) the way the processor's `max_pixels`/`min_pixels` do."""
    if max_pixels is None and min_pixels is None:
        return
    size = dict(image_processor.size)
    if min_pixels is not None:
        size["shortest_edge"] = int(min_pixels)
    if max_pixels is not None:
        size["longest_edge"] = int(max_pixels)
    if size["shortest_edge"] > size["longest_edge"]:
        raise InputError(f"min_pixels {size['shortest_edge']} exceeds max_pixels {size['longest_edge']}")
    image_processor.size = size
    for attr, key in (("min_pixels", "shortest_edge"), ("max_pixels", "longest_edge")):
        if getattr(image_processor, attr, None) is not None:  # older configs keep these too; they win at call time
            setattr(image_processor, attr, size[key])


def resolve_device(choice: str | torch.device = "auto") -> torch.device:
    """The device to load on: "auto" = the first CUDA device when one is visible, else the CPU.

    An explicit choice ("cpu", "cuda", "cuda:1", a torch.device) is kept; asking for CUDA where
    none is visible is an InputError here rather than a failure deep inside the first `.to()`.
    """
    if isinstance(choice, str) and choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(choice)
    except (RuntimeError, TypeError):
        raise InputError(f"unknown device {choice!r}; expected 'auto', 'cpu' or 'cuda[:N]'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {choice!r} asked for, but no CUDA device is visible (use 'auto' or 'cpu')")
    return device


def _load_parts(local: Path, dtype: str, attn_implementation: str) -> tuple[Any, Any, Any]:
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(local)
        # The stock class, whatever config.json's auto_map names: remote code never runs.
        model, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            local, dtype=DTYPES[dtype], attn_implementation=attn_implementation, use_safetensors=True,
            output_loading_info=True,
        )  # fmt: skip
    except (OSError, ValueError) as e:
        raise InputError(f"cannot load checkpoint {local}: {str(e).splitlines()[0]}") from None
    check_weight_keys(info, local)
    return tokenizer, image_processor, model


def load_checkpoint(
    path: str, model: ModelConfig | None = None, device: str | torch.device = "cpu", *, add_mask_token: bool = False
) -> Checkpoint:
    """Load model, tokenizer and image processor from `path` as the `model` section says.

    `model.dtype` (whatever the stored precision), `model.attn_implementation`, `model.cache_dir`
    (for s3://), `model.max_pixels` / `model.min_pixels` (the image processor's bounds; None keeps
    the checkpoint's); `model.path` is not read: callers load different paths with one section.
    `device`: see `resolve_device`. Either layout (module doc). `add_mask_token` is for the RAD
    training init only: an AR model without any MASK id gets `<|mask|>` and one more embedding row.
    """
    m = model or ModelConfig()
    local = resolve_local(path, m.cache_dir)
    check_checkpoint_dir(local)
    tokenizer, image_processor, lm = _load_parts(local, m.dtype, m.attn_implementation)
    set_pixel_bounds(image_processor, m.max_pixels, m.min_pixels)
    _, block_size = read_echo_meta(lm.config)
    mask_id, source = find_mask_id(lm.config, tokenizer)
    if mask_id is not None and mask_id >= lm.get_input_embeddings().weight.shape[0]:
        raise InputError(f"checkpoint {local}: MASK id {mask_id} ({source}) is outside the embedding table")
    if mask_id is None and add_mask_token:
        mask_id, added = ensure_mask_token(tokenizer)
        if added or mask_id >= lm.get_input_embeddings().weight.shape[0]:
            lm.resize_token_embeddings(len(tokenizer))
        log.info("%s has no MASK token: added <|mask|> as id %d and resized the embeddings to %d rows (RAD init)",
                 local, mask_id, lm.get_input_embeddings().weight.shape[0])  # fmt: skip
    elif source and source != "config.echo_mask_token_id":
        log.info("%s: MASK id %d from %s (published layout)", local, mask_id, source)
    write_echo_meta(lm.config, mask_id, block_size)
    tokenizer.padding_side = "left"
    lm.to(resolve_device(device)).eval()
    return Checkpoint(lm, tokenizer, image_processor, mask_id, block_size, local, block_size_from_name(path))


def save_checkpoint(ckpt_model: Any, tokenizer: Any, image_processor: Any, out_dir: str | Path) -> Path:
    """Save weights (safetensors), tokenizer and image processor into one HF-loadable directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    image_processor.save_pretrained(out)
    return out

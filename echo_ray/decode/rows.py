"""Row factory: one study's images -> its prompt -> a checked engine row (`RowRequest`).

The one place a request becomes decoder input, shared by the serving ingress (which builds rows
on CPU and hands them to the engine deployment), `ReportGenerator` (CLI, evaluation) and through
`EngineBatch` the DCD teacher. It needs no model weights: a checkpoint's tokenizer, image
processor and metadata (MASK id, block size, context length) are enough (`ModelSide`), so the
ingress builds exactly the rows the local decoder builds. Checks before any compute: decode
settings (`resolve_decode`), image count, and prompt + budget within the model context and the
engine's slots (InputError naming the numbers).

Usage:
    rows = RowFactory(side, DecodeConfig(max_new_tokens=96), PromptConfig())
    req = rows.row(images, "en", "onestep", 96, tag="r1")        # RowRequest (tensors only)
    mode, cfg = rows.mode("multistep", steps=4)                  # RowMode and the resolved config
    row_leaves(req)   # {"row.prompt.input_ids": "Tensor", ..., "row.tag": "str"}
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image

from echo_ray.config import DecodeConfig, ModelConfig, PromptConfig
from echo_ray.decode.engine import RowMode, RowRequest
from echo_ray.decode.settings import resolve_decode
from echo_ray.errors import InputError
from echo_ray.model.prompt import StudyPrompt, build_prompt
from echo_ray.model.tokenizer import IMAGE_TOKEN


@dataclass
class ModelSide:
    """What building rows needs from a checkpoint, without its weights."""

    tokenizer: Any
    image_processor: Any
    mask_id: int | None
    block_size: int | None
    path: Path
    max_context: int
    name_block_size: int | None = None

    @classmethod
    def of(cls, ckpt) -> "ModelSide":
        """The row-building side of a loaded `Checkpoint`."""
        ctx = int(ckpt.model.config.get_text_config().max_position_embeddings)
        return cls(ckpt.tokenizer, ckpt.image_processor, ckpt.mask_id, ckpt.block_size, ckpt.path, ctx,
                   getattr(ckpt, "name_block_size", None))  # fmt: skip

    @classmethod
    def load(cls, path: str, model: ModelConfig | None = None) -> "ModelSide":
        """Tokenizer, image processor and metadata of a checkpoint directory (or s3://), no weights.

        The same files and settings `load_checkpoint` reads (`model.max_pixels`/`min_pixels` bound the
        processor), so rows built from this side equal those of the loaded checkpoint."""
        from transformers import AutoConfig, AutoTokenizer
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from echo_ray.model.checkpoint import check_checkpoint_dir, read_echo_meta, set_pixel_bounds
        from echo_ray.model.published import block_size_from_name, find_mask_id
        from echo_ray.storage import resolve_local

        m = model or ModelConfig()
        local = resolve_local(path, m.cache_dir)
        check_checkpoint_dir(local)
        try:
            tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
            processor = Qwen2VLImageProcessorPil.from_pretrained(local)
            config = AutoConfig.from_pretrained(local, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise InputError(f"cannot load checkpoint {local}: {str(e).splitlines()[0]}") from None
        set_pixel_bounds(processor, m.max_pixels, m.min_pixels)
        _, block = read_echo_meta(config)
        mask_id, _ = find_mask_id(config, tokenizer)
        tokenizer.padding_side = "left"
        ctx = int(config.get_text_config().max_position_embeddings)
        return cls(tokenizer, processor, mask_id, block, local, ctx, block_size_from_name(path))

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(IMAGE_TOKEN))

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_token_id)


def row_leaves(obj, path: str = "row") -> dict[str, str]:
    """The type name of every leaf of a row (dataclasses walked): what a row carries across processes."""
    if is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, str] = {}
        for f in fields(obj):
            out.update(row_leaves(getattr(obj, f.name), f"{path}.{f.name}"))
        return out
    return {path: type(obj).__name__}


class RowFactory:
    """Images + settings -> checked `RowRequest`s for one model (see the module docstring)."""

    def __init__(self, side: ModelSide, decode: DecodeConfig, prompt: PromptConfig, override_block: bool = False):
        self.side, self.prompt_cfg, self.override_block = side, prompt, override_block
        self.cfg = resolve_decode(side, decode, override_block)
        self._modes: dict[tuple, tuple[RowMode, DecodeConfig]] = {}

    def settings(self, **overrides) -> DecodeConfig:
        """The factory's decode settings with per-call overrides (DecodeConfig fields) resolved."""
        if not overrides:
            return self.cfg
        return resolve_decode(self.side, replace(self.cfg, **overrides), self.override_block)

    def mode(self, name: str, steps: int | None = None) -> tuple[RowMode, DecodeConfig]:
        """(RowMode, resolved config) of a request mode, resolved once per (mode, steps)."""
        key = (name, steps)
        if key not in self._modes:
            cfg = self.settings(mode=name, steps=steps)
            self._modes[key] = (RowMode.from_decode(cfg), cfg)
        return self._modes[key]

    def prompts(self, studies: list[list[Image.Image]], language: str) -> list[StudyPrompt]:
        if not studies:
            raise InputError("no studies to decode")
        s = self.side
        return [build_prompt(s.tokenizer, s.image_processor, imgs, language, self.prompt_cfg) for imgs in studies]

    def check_fits(self, prompt_len: int, max_new_tokens: int, cfg: DecodeConfig) -> None:
        """Refuse prompt + budget beyond the model context, or the engine's slots when it decodes."""
        on_engine = cfg.engine == "static" and cfg.cache != "none"
        context = self.side.max_context
        limit = min(context, cfg.slots.max_len) if on_engine else context
        if prompt_len + max_new_tokens > limit:
            where = "the model context" if limit == context else "the decode engine's slot context"
            raise InputError(
                f"prompt of {prompt_len} tokens + max_new_tokens {max_new_tokens} exceeds {where} of {limit} "
                f"tokens (model context {context}, decode.slots.max_len {cfg.slots.max_len})"
            )

    def make(self, prompt: StudyPrompt, mode: RowMode, budget: int, cfg: DecodeConfig, tag=None) -> RowRequest:
        """A checked row from a built prompt (InputError when it cannot fit)."""
        if budget < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {budget}")
        self.check_fits(prompt.length, budget, cfg)
        return RowRequest(prompt=prompt, mode=mode, max_new_tokens=budget, tag=tag)

    def row(self, images: list[Image.Image], language: str, mode: str, budget: int, steps: int | None = None,
            tag=None) -> RowRequest:  # fmt: skip
        """Build and check one study's row (CPU work: image processor + tokenizer)."""
        row_mode, cfg = self.mode(mode, steps)
        (prompt,) = self.prompts([images], language)
        return self.make(prompt, row_mode, budget, cfg, tag)

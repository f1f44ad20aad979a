"""Import a checkpoint in the published ECHO layout (or ours) into echo_ray's layout.

Loads it the way every command does (echo_ray.model.checkpoint: MASK id from `mask_token_id` or
`<|MASK|>`, stock Qwen2.5-VL class, no remote code), records the MASK id and block size as echo
metadata, drops the remote-code `auto_map`, and saves safetensors in the requested dtype with the
tokenizer and image processor. The block size comes from `--block-size`, else the checkpoint's
metadata, else a `_block4` / `_block8` name suffix (logged); none of them is an error.

Usage:
    echo-ray import-checkpoint ~/models/ECHO_block8 --out runs/echo_block8 --dtype bfloat16
    import_checkpoint("s3://bucket/ECHO_Base_block4", "runs/echo_base4", block_size=None)
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from echo_ray.config import ModelConfig
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import DTYPES, load_checkpoint, save_checkpoint, write_echo_meta
from echo_ray.model.published import missing_mask_message
from echo_ray.storage import is_s3, upload_dir

log = logging.getLogger(__name__)


def import_checkpoint(src: str, out: str, block_size: int | None = None, model: ModelConfig | None = None) -> Path | str:
    """Write `src` to `out` (local directory or s3://) in echo_ray's layout; returns `out`.

    `model`: how to load `src` (`dtype` is the saved precision, `cache_dir` mirrors s3://; default
    bfloat16). Image bounds set there are saved with the image processor.
    """
    model = model or ModelConfig(dtype="bfloat16")
    if model.dtype not in DTYPES:
        raise InputError(f"unknown dtype {model.dtype!r}; expected one of {sorted(DTYPES)}")
    if block_size is not None and block_size < 1:
        raise InputError(f"--block-size must be >= 1, got {block_size}")
    ckpt = load_checkpoint(src, model)
    if ckpt.mask_id is None:
        raise InputError(missing_mask_message(src))
    block = block_size or ckpt.block_size
    if block is None:
        block = ckpt.name_block_size
        if block is None:
            raise InputError(f"checkpoint {src} records no block size and its name has no _block4/_block8 suffix; "
                             "pass --block-size")  # fmt: skip
        log.info("block size %d read from the checkpoint name %s", block, src)
    config = ckpt.model.config
    write_echo_meta(config, ckpt.mask_id, block, getattr(config, "echo_languages", None))
    if hasattr(config, "auto_map"):
        del config.auto_map  # the stock class loads it; no remote modeling file is needed or run
    if is_s3(out):
        with tempfile.TemporaryDirectory() as tmp:
            save_checkpoint(ckpt.model, ckpt.tokenizer, ckpt.image_processor, tmp)
            upload_dir(tmp, out)
        return out
    target = Path(out).expanduser()
    if target.exists() and any(target.iterdir()):
        raise InputError(f"output directory {target} exists and is not empty")
    return save_checkpoint(ckpt.model, ckpt.tokenizer, ckpt.image_processor, target)

"""Decode settings resolved against a checkpoint before any compute: block size, steps, threshold.

`resolve_decode` fills the block size from the checkpoint (its metadata, else the config, else a
`_block4/8` name) and refuses combinations that would be silently wrong (a `steps` the mode ignores,
S > B, a block size other than the trained one without the override). It reads only metadata
(`mask_id`, `block_size`, `path`, `name_block_size`), so a weightless `rows.ModelSide` works too.

Usage:
    cfg = resolve_decode(ckpt, DecodeConfig(mode="multistep", steps=4))
"""

from __future__ import annotations

import logging
from dataclasses import replace

from echo_ray.config import DecodeConfig
from echo_ray.errors import InputError
from echo_ray.model.published import missing_mask_message

log = logging.getLogger(__name__)


def resolve_block_size(ckpt, cfg: DecodeConfig, override_block: bool) -> int:
    """Block size: the checkpoint's metadata, else `cfg.block_size`, else its `_block4/8` name."""
    trained = ckpt.block_size
    named = getattr(ckpt, "name_block_size", None)
    if trained is None and cfg.block_size is None and named is not None:
        log.info("checkpoint %s records no block size; using %d from its name", ckpt.path, named)
        return named
    block = cfg.block_size or trained
    if block is None:
        raise InputError(f"checkpoint {ckpt.path} records no block size; pass --block-size (or decode.block_size)")
    if block < 1:
        raise InputError(f"block size must be >= 1, got {block}")
    if trained is not None and block != trained and not override_block:
        raise InputError(
            f"block size {block} differs from the checkpoint's trained block size {trained} "
            "(pass --override-block-size to decode with it anyway)"
        )
    return block


def _ignored_steps(cfg: DecodeConfig) -> str:
    """Why `cfg.steps` would have no effect ('' when it is used)."""
    if cfg.steps is None:
        return ""
    if cfg.mode == "ar":
        return "the AR decoder has no steps"
    if cfg.mode == "onestep":
        return "" if cfg.steps == 1 else "one-step decoding takes exactly one step per block"
    if cfg.schedule == "confidence" and cfg.threshold is not None:
        return "the dynamic confidence schedule (threshold set) ignores steps; use schedule 'quota' for both"
    return ""


def resolve_decode(ckpt, cfg: DecodeConfig, override_block: bool = False) -> DecodeConfig:
    """Fill the block size from the checkpoint and check the combination; errors before compute.

    A `steps` value the chosen mode / schedule would ignore is refused, never dropped.
    """
    why = _ignored_steps(cfg)
    if why:
        raise InputError(f"steps={cfg.steps} given but {why} (mode {cfg.mode}, schedule {cfg.schedule})")
    if cfg.mode == "ar":
        return replace(cfg, block_size=cfg.block_size or 1)
    if ckpt.mask_id is None:
        raise InputError(missing_mask_message(ckpt.path))
    block = resolve_block_size(ckpt, cfg, override_block)
    steps = None
    if cfg.mode == "multistep" and (cfg.threshold is None or cfg.schedule == "quota"):
        steps = cfg.steps or block
        if steps > block:
            raise InputError(f"steps per block S={steps} exceeds the block size B={block}")
        if steps < 1:
            raise InputError(f"steps per block S={steps} must be >= 1")
    if cfg.threshold is not None and not 0.0 < cfg.threshold <= 1.0:
        raise InputError(f"threshold tau={cfg.threshold} must be in (0, 1]")
    return replace(cfg, block_size=block, steps=steps)

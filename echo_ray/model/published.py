"""Conventions of the published ECHO checkpoints (ECHO_block4/8, ECHO_Base_block4/8) and of ours.

The authors' checkpoints (midea-ai/ECHO, `inference/`) keep the MASK id as `config.json:
mask_token_id`, spell the token `<|MASK|>`, record no block size (the model name says it:
`..._block4`, `..._block8`), may ship float32 weights, and carry a remote modeling file whose only
addition is the fused-KV switch that echo_ray implements itself (echo_ray.decode.kv_cache), so the
body loads into the stock Qwen2.5-VL class and remote code never runs. echo_ray's own checkpoints
store `echo_mask_token_id` / `echo_block_size`. This module holds the lookups both layouts share.

Usage:
    mask_id, source = find_mask_id(model.config, tokenizer)      # (None, "") when there is none
    block_size_from_name("models/ECHO_Base_block8")              # 8
    check_weight_keys(loading_info, path)                        # InputError on a foreign body
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

from echo_ray.errors import InputError

# Tokenizer spellings of the MASK token, in lookup order: the published one, then ours.
MASK_SPELLINGS = ("<|MASK|>", "<|mask|>")
_BLOCK_SUFFIX = re.compile(r"_block(4|8)$", re.IGNORECASE)
_SHOW_KEYS = 8


def find_mask_id(config: Any, tokenizer: Any) -> tuple[int | None, str]:
    """The MASK id and where it was found: echo metadata, `config.mask_token_id`, then the vocab.

    Returns (None, "") when none of them has it; the caller decides whether that is an error.
    """
    own = getattr(config, "echo_mask_token_id", None)
    if own is not None:
        return int(own), "config.echo_mask_token_id"
    published = getattr(config, "mask_token_id", None)
    if published is None and hasattr(config, "get_text_config"):
        published = getattr(config.get_text_config(), "mask_token_id", None)
    if published is not None:
        return int(published), "config.mask_token_id"
    vocab = tokenizer.get_vocab()
    for spelling in MASK_SPELLINGS:
        if spelling in vocab:
            return int(vocab[spelling]), f"tokenizer {spelling}"
    return None, ""


def missing_mask_message(path: Any) -> str:
    """The one error text for a checkpoint without any MASK id (decoding, DCD teachers)."""
    return (
        f"checkpoint {path} has no MASK token id: none of config.echo_mask_token_id, config.mask_token_id, "
        f"or a tokenizer token {' / '.join(MASK_SPELLINGS)}; block decoding needs a block-diffusion checkpoint "
        "(an AR base model decodes only with --mode ar; RAD training adds the MASK token)"
    )


def block_size_from_name(path: str | Any) -> int | None:
    """Block size 4 or 8 from a `_block4` / `_block8` folder-name suffix (published models), else None."""
    name = PurePosixPath(str(path).rstrip("/")).name
    m = _BLOCK_SUFFIX.search(name)
    return int(m.group(1)) if m else None


def check_weight_keys(info: dict[str, Any], path: Any) -> None:
    """Refuse weights that do not fit the stock Qwen2.5-VL class, naming the offending keys.

    `info` is transformers' loading info (`output_loading_info=True`): missing_keys,
    unexpected_keys, mismatched_keys.
    """
    problems = []
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"):
        keys = sorted(str(k) for k in (info.get(kind) or []))
        if keys:
            shown = ", ".join(keys[:_SHOW_KEYS]) + (f" and {len(keys) - _SHOW_KEYS} more" if len(keys) > _SHOW_KEYS else "")
            problems.append(f"{len(keys)} {kind.replace('_', ' ')} ({shown})")
    if problems:
        raise InputError(
            f"checkpoint {path} does not fit the stock Qwen2.5-VL model (remote code is never run): "
            + "; ".join(problems)
        )


def mask_id_without_weights(local: Any, config: dict[str, Any]) -> int | None:
    """`find_mask_id` from a checkpoint directory's config.json dict and tokenizer, without weights."""
    from types import SimpleNamespace

    from transformers import AutoTokenizer

    meta = SimpleNamespace(
        echo_mask_token_id=config.get("echo_mask_token_id"),
        mask_token_id=config.get("mask_token_id", (config.get("text_config") or {}).get("mask_token_id")),
    )
    if meta.echo_mask_token_id is not None or meta.mask_token_id is not None:
        return find_mask_id(meta, None)[0]
    try:
        tokenizer = AutoTokenizer.from_pretrained(local, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read the tokenizer of {local}: {str(e).splitlines()[0]}") from None
    return find_mask_id(meta, tokenizer)[0]

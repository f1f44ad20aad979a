"""Resolve and check the rows of an evaluation (checkpoint x decoder) before anything decodes.

A row comes from an `EvalRow` (config) with unset fields filled from `eval.model` and the
`decode` section. Each checkpoint's `config.json` is read on its own, without loading weights, for
the ECHO metadata: the MASK id (ours or the published layout's, echo_ray.model.published), `echo_block_size` (the block size it was trained with) and,
when the training stage recorded it, `echo_languages` (the languages of its training reports). The
decode settings then go through the generator's own `resolve_decode`, so the checks are the ones
decoding would apply: a block size other than the trained one is refused unless the row sets
`override_block`, S <= B, a MASK id for block modes. A split language outside `echo_languages` is
refused; a checkpoint without that field is not checked (logged once per checkpoint).

Usage:
    rows = plan_rows(cfg.eval, cfg.decode, cfg.model, language="en")
    rows[0].name, rows[0].decode.block_size, rows[0].local
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

from echo_ray.config import DecodeConfig, EvalConfig, EvalRow, ModelConfig
from echo_ray.decode.generator import resolve_decode
from echo_ray.errors import InputError
from echo_ray.model.checkpoint import check_checkpoint_dir
from echo_ray.model.published import block_size_from_name, mask_id_without_weights
from echo_ray.storage import resolve_local

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointMeta:
    """What `resolve_decode` needs from a checkpoint (mask_id, block_size, path), read from config.json."""

    path: Path
    mask_id: Optional[int]
    block_size: Optional[int]
    languages: Optional[tuple[str, ...]]
    name_block_size: Optional[int] = None  # `_block4` / `_block8` suffix of a published model's name


@dataclass(frozen=True)
class PlannedRow:
    name: str
    model: str  # as given (local path or s3://)
    local: Path  # local directory (s3 checkpoints are mirrored into model.cache_dir)
    decode: DecodeConfig  # resolved: block size filled, steps set for the static schedule
    override_block: bool


def read_checkpoint_meta(model: str, cache_dir: str) -> CheckpointMeta:
    """The ECHO metadata of a checkpoint directory (or s3:// prefix), without loading weights."""
    local = resolve_local(model, cache_dir)
    check_checkpoint_dir(local)
    try:
        cfg = json.loads((local / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"cannot read {local / 'config.json'}: {e.__class__.__name__}") from None
    langs = cfg.get("echo_languages")
    if langs is not None and not (isinstance(langs, list) and all(isinstance(x, str) for x in langs)):
        raise InputError(f"{local / 'config.json'}: echo_languages must be a list of language codes, got {langs!r}")
    return CheckpointMeta(local, mask_id_without_weights(local, cfg), cfg.get("echo_block_size"),
                          tuple(langs) if langs is not None else None, block_size_from_name(model))  # fmt: skip


def default_name(model: str, dec: DecodeConfig) -> str:
    """'<checkpoint folder> <mode> B=<b>' (+ S or tau for multistep); AR rows have no block size."""
    folder = Path(str(model).rstrip("/")).name or str(model)
    if dec.mode == "ar":
        return f"{folder} AR"
    name = f"{folder} {dec.mode} B={dec.block_size}"
    if dec.mode == "multistep":
        name += f" tau={dec.threshold}" if dec.threshold is not None else f" S={dec.steps}"
    return name


def _row_decode(row: EvalRow, base: DecodeConfig, language: str) -> DecodeConfig:
    fields = {"mode": row.mode, "block_size": row.block_size, "steps": row.steps, "threshold": row.threshold}
    dec = replace(base, language=language, **{k: v for k, v in fields.items() if v is not None})
    if dec.mode != "multistep" and row.steps is None:
        # decode.steps describes the multi-step rows; AR / one-step rows beside them do not take it
        dec = replace(dec, steps=None)
    return dec


def _check_language(meta: CheckpointMeta, model: str, language: str, warned: set) -> None:
    if meta.languages is None:
        if model not in warned:
            warned.add(model)
            log.info("checkpoint %s records no echo_languages; its language is not checked", model)
        return
    if language not in meta.languages:
        raise InputError(
            f"model/split mismatch: checkpoint {model} was trained on {', '.join(meta.languages)} reports, "
            f"but the evaluation language is '{language}'"
        )


def plan_rows(eval_cfg: EvalConfig, decode: DecodeConfig, model_cfg: ModelConfig, language: str) -> list[PlannedRow]:
    """Every row of the evaluation, resolved and checked (module doc); raises InputError first."""
    rows = eval_cfg.rows or [EvalRow()]
    metas: dict[str, CheckpointMeta] = {}
    warned: set = set()
    planned: list[PlannedRow] = []
    for i, row in enumerate(rows):
        model = row.model or eval_cfg.model
        if not model:
            raise InputError(f"eval row {i}: no model (set eval.model, the row's model, or pass --model)")
        if model not in metas:
            metas[model] = read_checkpoint_meta(model, model_cfg.cache_dir)
        meta = metas[model]
        _check_language(meta, model, language, warned)
        try:
            dec = resolve_decode(meta, _row_decode(row, decode, language), row.override_block)  # type: ignore[arg-type]
        except InputError as e:
            raise InputError(f"model/decoder mismatch for {model}: {e}") from None
        planned.append(PlannedRow(row.name or default_name(model, dec), model, meta.path, dec, row.override_block))
    names = [p.name for p in planned]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"eval rows share the name(s) {', '.join(dupes)}; give each row a distinct name")
    return planned

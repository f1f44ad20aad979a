"""Typed configuration tree for every echo_ray stage, loaded from YAML in one place.

Each component receives the narrowest sub-config it needs (e.g. the decoder gets `DecodeConfig`).
Unknown keys are an error that names the key path, so a typo never silently falls back to a
default. The resolved tree is written next to every output (`save_config`). The sections live in
`config/inference.py` (model, prompt, decode, eval, serve) and `config/training.py` (phantom corpus,
normalization, the training stages); this module assembles the tree, loads YAML and applies presets.

Usage:
    cfg = load_config("configs/tiny.yaml", overrides={"train.max_steps": 5})
    save_config(cfg, out_dir)          # writes out_dir/echo_config.yaml
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from echo_ray.config.inference import (DecodeConfig, EvalConfig, EvalRow, ModelConfig, PromptConfig, ServeConfig,
                                       SlotsConfig, TinyModelConfig)
from echo_ray.config.training import (CptConfig, DcdConfig, DcdLossConfig, DcdTeacherConfig, DedupConfig,
                                      DistributedConfig, EngineConfig, NoiseConfig, NormalizeConfig, OptimConfig,
                                      PhantomConfig, RadConfig, SourceSpec, SplitConfig, StageConfig, TrainConfig)
from echo_ray.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME", "PRESETS", "CptConfig", "DcdConfig", "DcdLossConfig", "DcdTeacherConfig", "DecodeConfig",
    "DedupConfig", "DistributedConfig", "EchoConfig", "EngineConfig", "EvalConfig", "EvalRow", "ModelConfig",
    "NoiseConfig", "NormalizeConfig", "OptimConfig", "PhantomConfig", "PromptConfig", "RadConfig", "ServeConfig",
    "SlotsConfig", "SourceSpec", "SplitConfig", "StageConfig", "StorageConfig", "TinyModelConfig", "TrainConfig",
    "from_dict", "load_config", "save_config", "to_dict",
]  # fmt: skip

CONFIG_FILENAME = "echo_config.yaml"

# Named presets: dotted keys applied under whatever the YAML / --set give explicitly.
PRESETS: dict[str, dict[str, Any]] = {
    # The published ECHO inference and evaluation settings (midea-ai/ECHO inference/, eval/EasyEval):
    # the stock Qwen2.5-VL chat template's system prompt, their instructions and image bounds, the
    # per-step quota schedule (dynamic, tau 0.85, S = B) and 512 new tokens.
    "echo-reference": {
        "prompt.system": "You are a helpful assistant.",
        "prompt.instruction_en": (
            "Review this chest X-ray and write a report. Use this format: Findings: {}, Impression: {}."
        ),
        "prompt.instruction_zh": "这是一组胸部X光图像，请生成一份医学报告，包括所见和结论。以以下格式返回报告：所见：{} 结论：{}。",
        "model.max_pixels": 2_250_000,
        "model.min_pixels": 256 * 28 * 28,
        "decode.schedule": "quota",
        "decode.threshold": 0.85,
        "decode.max_new_tokens": 512,
    },
}


@dataclass
class StorageConfig:
    # Absolute directory or s3:// prefix that every stage shares: relative data/output paths resolve
    # against it. Required for relative paths under a Ray job (see echo_ray/storage.py).
    root: str = ""


@dataclass
class EchoConfig:
    """The whole tree; YAML files set any subset of it."""

    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    normalize: NormalizeConfig = field(default_factory=NormalizeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check and convert one YAML value to the annotated type `tp`; `key` names it in errors."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {type(value).__name__}")
        return from_dict(tp, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(inner[0], value, key)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"'{key}' must be one of {list(args)}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"'{key}' must be a list, got {type(value).__name__}")
        return [_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"'{key}' must be a list of {len(args)} values")
        return tuple(_convert(a, v, key) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping")
        return dict(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not (
        isinstance(value, tp) and not (tp is int and isinstance(value, bool))
    ):
        raise ConfigError(f"'{key}' must be {tp.__name__}, got {value!r}")
    return value


def from_dict(cls: type, data: dict[str, Any], prefix: str = "", base: Any = None) -> Any:
    """Build dataclass `cls` from `data`, rejecting unknown keys by their full dotted path.

    Keys absent from `data` keep the values of `base` (default: `cls()`), so a YAML that sets one
    key of a section keeps that section's own defaults (e.g. `train.dcd.split` stays "dcd").
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            path = f"{prefix}.{k}" if prefix else str(k)
            raise ConfigError(f"unknown config key '{path}' (valid here: {', '.join(sorted(names))})")
    base = cls() if base is None else base
    kwargs = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else k
        current = getattr(base, k)
        if dataclasses.is_dataclass(hints[k]) and isinstance(v, dict) and dataclasses.is_dataclass(current):
            kwargs[k] = from_dict(hints[k], v, prefix=key, base=current)
        else:
            kwargs[k] = _convert(hints[k], v, key)
    out = dataclasses.replace(base, **kwargs)
    check = getattr(out, "check", None)
    if check is not None:  # range checks of a section, where it is loaded, naming its dotted key
        check(prefix or cls.__name__)
    return out


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EchoConfig:
    """Load the YAML at `path` (None = all defaults), apply dotted `overrides`, validate strictly."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({e.__class__.__name__})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        data = loaded or {}
    for k, v in (overrides or {}).items():
        _set_dotted(data, k, v)
    _apply_preset(data)
    try:
        return from_dict(EchoConfig, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path else str(e)) from None


def _has_dotted(data: dict[str, Any], dotted: str) -> bool:
    node: Any = data
    for p in dotted.split("."):
        if not isinstance(node, dict) or p not in node:
            return False
        node = node[p]
    return True


def _apply_preset(data: dict[str, Any]) -> None:
    """Fill the keys of `decode.preset` that the YAML / overrides leave unset (explicit ones win)."""
    decode = data.get("decode")
    name = decode.get("preset") if isinstance(decode, dict) else None
    if name is None:
        return
    if name not in PRESETS:
        raise ConfigError(f"'decode.preset' must be one of {sorted(PRESETS)}, got {name!r}")
    for key, value in PRESETS[name].items():
        if not _has_dotted(data, key):
            _set_dotted(data, key, value)


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain-data view of a config (tuples become lists so YAML stays portable)."""

    def clean(v: Any) -> Any:
        if isinstance(v, tuple):
            return [clean(x) for x in v]
        if isinstance(v, list):
            return [clean(x) for x in v]
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        return v

    return clean(dataclasses.asdict(cfg))


def save_config(cfg: Any, out_dir: str | Path, name: str = CONFIG_FILENAME, section: str = "") -> Path | str:
    """The one writer of the resolved config next to an output (local directory or s3://).

    `section` nests the tree under that key (the normalization output keeps its `normalize:` part).
    Returns the written path (a Path locally, the URI on S3).
    """
    from echo_ray.storage import is_s3, join, write_text

    data = {section: to_dict(cfg)} if section else to_dict(cfg)
    target = join(str(out_dir), name)
    write_text(target, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return target if is_s3(target) else Path(target)

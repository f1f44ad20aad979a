"""Typed configuration tree for every echo_ray stage, loaded from YAML in one place.

Each component receives the narrowest sub-config it needs (e.g. the decoder gets `DecodeConfig`).
The sections are stdlib dataclasses validated by pydantic (`config/section.py`): unknown keys and
out-of-range values are an error that names the key path, so a typo never silently falls back to a
default. The resolved tree is written next to every output (`save_config`). The sections live in
`config/inference.py` (model, prompt, decode, eval, serve) and `config/training.py` (phantom corpus,
normalization, the training stages); this module assembles the tree, loads YAML and applies presets.

Usage:
    cfg = load_config("configs/tiny.yaml", overrides={"train.max_steps": 5})
    save_config(cfg, out_dir)          # writes out_dir/echo_config.yaml
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from echo_ray.config.inference import (DecodeConfig, EvalConfig, EvalRow, ModelConfig, PromptConfig, ServeConfig,
                                       SlotsConfig, TinyModelConfig)
from echo_ray.config.section import Section, check_section, dump, validate
from echo_ray.config.training import (CptConfig, DcdConfig, DcdLossConfig, DcdTeacherConfig, DedupConfig,
                                      DistributedConfig, EngineConfig, NoiseConfig, NormalizeConfig, OptimConfig,
                                      PhantomConfig, RadConfig, SourceSpec, SplitConfig, StageConfig, TrainConfig)
from echo_ray.errors import ConfigError

__all__ = [
    "CONFIG_FILENAME", "PRESETS", "CptConfig", "DcdConfig", "DcdLossConfig", "DcdTeacherConfig", "DecodeConfig",
    "DedupConfig", "DistributedConfig", "EchoConfig", "EngineConfig", "EvalConfig", "EvalRow", "ModelConfig",
    "NoiseConfig", "NormalizeConfig", "OptimConfig", "PhantomConfig", "PromptConfig", "RadConfig", "ServeConfig",
    "SlotsConfig", "SourceSpec", "SplitConfig", "StageConfig", "StorageConfig", "TinyModelConfig", "TrainConfig",
    "check_section", "from_dict", "load_config", "save_config", "to_dict",
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
class StorageConfig(Section):
    # Absolute directory or s3:// prefix that every stage shares: relative data/output paths resolve
    # against it. Required for relative paths under a Ray job (see echo_ray/config/paths.py).
    root: str = ""


@dataclass
class EchoConfig(Section):
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


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> EchoConfig:
    """Load the YAML at `path`, apply dotted `overrides`, validate strictly.

    `path` None = the dataclass defaults: the tiny model at smoke-test scale (short stages, a small
    phantom corpus) with the DCD recipe that configs/tiny.yaml and benchmarks/dcd.py share; the
    demo's scale (stage lengths, corpus size) is configs/tiny.yaml's.
    """
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


# The names the package calls: plain data -> checked dataclass (errors name the dotted key), and back.
from_dict = validate
to_dict = dump


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

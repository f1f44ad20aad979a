"""Text engines for corpus normalization: rules (default), transformers, vllm (lazy import).

All implement `echo_ray.engines.base.TextEngine`; the module of the selected engine is imported
only when it is chosen, so the CPU path never needs vllm installed.

Usage:
    engine = make_engine(cfg.normalize.engine)   # EngineConfig(kind="rules")
    ds = engine.apply(ds, "standardize")
"""

from __future__ import annotations

import importlib

from echo_ray.config import EngineConfig
from echo_ray.engines.base import TextEngine
from echo_ray.errors import ConfigError

ENGINES: dict[str, str] = {
    "rules": "echo_ray.engines.rules:RulesEngine",
    "transformers": "echo_ray.engines.transformers_engine:TransformersEngine",
    "vllm": "echo_ray.engines.vllm_engine:VLLMEngine",
}


def make_engine(cfg: EngineConfig) -> TextEngine:
    """The engine named by cfg.kind; an unknown kind is a ConfigError naming the choices."""
    if cfg.kind not in ENGINES:
        raise ConfigError(f"unknown engine {cfg.kind!r}; choose one of {sorted(ENGINES)}")
    module, _, cls = ENGINES[cfg.kind].partition(":")
    return getattr(importlib.import_module(module), cls)(cfg)

"""Application builder for `serve run` / `serve deploy`: ``import_path: echo_ray.serve.app:build_app``.

`args` (from serve_config.yaml's ``applications[].args`` or `serve run ... model=DIR`) are the
`ServeConfig` fields plus optional ``decode`` and ``prompt`` mappings (`DecodeConfig`,
`PromptConfig`); unknown keys are a ConfigError naming the key. Deployment options (replicas,
autoscaling, GPUs) are set in serve_config.yaml, which overrides the code defaults in `service.py`.

Usage:
    serve run echo_ray.serve.app:build_app model=runs/dcd/final
    serve deploy serve_config.yaml
    serve.run(build_app({"model": "runs/dcd/final", "decode": {"max_new_tokens": 96}}))
"""

from __future__ import annotations

import typing
from typing import Any

from ray.serve import Application

from echo_ray.config import DecodeConfig, PromptConfig, ServeConfig, from_dict
from echo_ray.errors import ConfigError
from echo_ray.serve.service import ReportService


def _coerce_strings(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """`serve run app key=value` passes every value as a string; convert those of numeric fields."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for key, value in data.items():
        tp = hints.get(key)
        if isinstance(value, str) and tp in (int, float):
            try:
                out[key] = tp(value)
            except ValueError:
                raise ConfigError(f"serve args: '{key}' must be {tp.__name__}, got {value!r}") from None
    return out


def parse_app_args(args: dict[str, Any] | None) -> tuple[ServeConfig, DecodeConfig, PromptConfig]:
    """Strictly typed configs from Serve's `args` mapping."""
    data = dict(args or {})
    decode = from_dict(DecodeConfig, data.pop("decode", None) or {}, "decode")
    prompt = from_dict(PromptConfig, data.pop("prompt", None) or {}, "prompt")
    cfg = from_dict(ServeConfig, _coerce_strings(ServeConfig, data), "serve")  # ranges: ServeConfig.check
    if not cfg.model:
        raise ConfigError("serve args: 'model' (checkpoint directory or s3:// URI) is required")
    if decode.slots.max_rows < 1:
        raise ConfigError(f"serve args: decode.slots.max_rows must be >= 1, got {decode.slots.max_rows}")
    if decode.max_new_tokens > cfg.max_new_tokens_limit:
        raise ConfigError(
            f"serve args: decode.max_new_tokens {decode.max_new_tokens} exceeds max_new_tokens_limit "
            f"{cfg.max_new_tokens_limit}"
        )
    return cfg, decode, prompt


# Requests a replica takes beyond its decode rows and queue: /healthz, /readyz, /v1/models, the page.
CONTROL_HEADROOM = 8


def max_ongoing_requests(cfg: ServeConfig, decode: DecodeConfig) -> int:
    """Serve's per-replica concurrency cap, consistent with the batching path.

    continuous: slots + queue + headroom, so every request the scheduler could hold reaches the
    replica, and overflow is answered by the replica's 429 + Retry-After instead of waiting unbounded
    in Serve's router. static: room for a full batch plus streams (as before).
    """
    if cfg.batching == "continuous":
        return decode.slots.max_rows + cfg.max_queue + CONTROL_HEADROOM
    return max(32, 2 * cfg.max_batch_size)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The ReportService application with `max_ongoing_requests` from the slots and queue."""
    cfg, decode, prompt = parse_app_args(args)
    deployment = ReportService.options(max_ongoing_requests=max_ongoing_requests(cfg, decode))
    return deployment.bind(cfg, decode, prompt)

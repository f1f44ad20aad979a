"""Application builder for `serve run` / `serve deploy`: ``import_path: echo_ray.serve.app:build_app``.

`args` (from serve_config.yaml's ``applications[].args`` or `serve run ... model=DIR`) are the
`ServeConfig` fields plus optional ``decode``, ``prompt`` and ``model_config`` mappings
(`DecodeConfig`, `PromptConfig`, and `ModelConfig`: the config file's `model` section, how the
checkpoint named by `model` loads: dtype, attention, cache, image bounds); unknown keys are a
ConfigError naming the key. Deployment options (replicas,
autoscaling, GPUs) are set in serve_config.yaml per deployment (`ReportService`: the CPU ingress,
`ReportEngine`: the GPU engine), which overrides the code defaults in `service.py` and `engine.py`.

Usage:
    serve run echo_ray.serve.app:build_app model=runs/dcd/final
    serve deploy serve_config.yaml
    serve.run(build_app({"model": "runs/dcd/final", "decode": {"max_new_tokens": 96}}))
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from echo_ray.config import DecodeConfig, ModelConfig, PromptConfig, ServeConfig, from_dict
from echo_ray.errors import ConfigError
from echo_ray.serve.engine import ReportEngine
from echo_ray.serve.service import ReportService


ROW_BY_VALUE_LIMIT = (4 << 20) - (256 << 10)  # Serve's replica gRPC receive limit (4 MiB) less an envelope margin

# Serve args that moved into the model section (issue 28): named in the error, not just "unknown".
MOVED = {"dtype": "model_config.dtype", "image_max_pixels": "model_config.max_pixels",
         "image_min_pixels": "model_config.min_pixels"}  # fmt: skip


def parse_app_args(args: dict[str, Any] | None) -> tuple[ServeConfig, DecodeConfig, PromptConfig, ModelConfig]:
    """Strictly typed configs from Serve's `args` mapping."""
    data = dict(args or {})
    moved = sorted(MOVED.keys() & data.keys())
    if moved:
        raise ConfigError(f"serve args: '{moved[0]}' is no longer a serve setting; set {MOVED[moved[0]]} (the model section)")
    decode = from_dict(DecodeConfig, data.pop("decode", None) or {}, "decode")
    prompt = from_dict(PromptConfig, data.pop("prompt", None) or {}, "prompt")
    model = from_dict(ModelConfig, data.pop("model_config", None) or {}, "model_config")
    cfg = from_dict(ServeConfig, data, "serve")  # `key=value` strings become the field types (lax)
    if not cfg.model:
        raise ConfigError("serve args: 'model' (checkpoint directory or s3:// URI) is required")
    if cfg.row_by_value_max_bytes > ROW_BY_VALUE_LIMIT:
        raise ConfigError(f"serve args: row_by_value_max_bytes {cfg.row_by_value_max_bytes} exceeds {ROW_BY_VALUE_LIMIT} "
                          "(Serve's 4 MiB gRPC message limit between replicas, less room for the request's envelope)")  # fmt: skip
    if decode.max_new_tokens > cfg.max_new_tokens_limit:
        raise ConfigError(
            f"serve args: decode.max_new_tokens {decode.max_new_tokens} exceeds max_new_tokens_limit "
            f"{cfg.max_new_tokens_limit}"
        )
    return cfg, decode, prompt, model


# Requests an engine replica takes beyond its decode rows and queue: the ingress's /v1/status calls.
CONTROL_HEADROOM = 8
INGRESS_MIN_ONGOING = 256  # the ingress mostly awaits the engine: many requests per (CPU) replica


def max_ongoing_requests(cfg: ServeConfig, decode: DecodeConfig) -> int:
    """Serve's per-replica concurrency cap of the engine deployment: slots + queue + headroom.

    Every request the scheduler could hold reaches the replica, and overflow is answered by the
    replica's 429 + Retry-After (through the ingress) instead of waiting unbounded in Serve's router.
    """
    return decode.slots.max_rows + cfg.max_queue + CONTROL_HEADROOM


def ingress_max_ongoing(cfg: ServeConfig, decode: DecodeConfig) -> int:
    """The ingress's cap: at least a few engine replicas' worth of requests (it holds no slots)."""
    return max(INGRESS_MIN_ONGOING, 4 * max_ongoing_requests(cfg, decode))


# Serve's own request path, tuned for a replica whose user code never blocks its event loop (the
# ingress runs image work in threads, the engine's model on its scheduler thread): user code and the
# handle's router on the replica's main loop, not on two more threads. Measured at c=32 on the mixed
# load (benchmarks/serve_load.py, 2 CPUs): ~15 % more requests/s and ~2 ms less CPU per request on
# each of ingress, engine and proxy. These are Ray Serve's documented knobs (they are part of its
# RAY_SERVE_THROUGHPUT_OPTIMIZED profile) and are read when a replica's process starts, so they
# travel in each deployment's runtime_env (serve_config.yaml sets them for the whole application).
# The HTTP proxy routes with the same router: `echo-ray serve` puts them in the environment of the
# Ray it starts, and cluster.yaml on each node's `ray start` (~1 ms less proxy CPU per request).
REPLICA_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}
# The proxy's process also sends requests to the ingress by value over the replicas' gRPC channel
# instead of through the object store and a call back for the body (measured: streamed chat
# completions at c=32 36 -> 43 requests/s, ~4 ms less proxy CPU each). Bodies travel in the ASGI
# messages' chunks, so gRPC's 4 MiB message limit does not cap uploads (tests/test_serve_split.py).
PROXY_ENV = {**REPLICA_ENV, "RAY_SERVE_PROXY_USE_GRPC": "1"}


def with_replica_env(options: dict | None) -> dict:
    """Deployment options with `REPLICA_ENV` added to their actor's runtime_env (explicit values win)."""
    opts = dict(options or {})
    actor = dict(opts.get("ray_actor_options") or {})
    runtime_env = dict(actor.get("runtime_env") or {})
    runtime_env["env_vars"] = {**REPLICA_ENV, **(runtime_env.get("env_vars") or {})}
    actor["runtime_env"] = runtime_env
    opts["ray_actor_options"] = actor
    return opts


def compose(cfg: ServeConfig, decode: DecodeConfig, prompt: PromptConfig, model: ModelConfig,
            engine: dict | None = None, ingress: dict | None = None) -> Application:  # fmt: skip
    """The two-deployment application: the ingress bound over a handle to the engine deployment.

    `engine` / `ingress`: extra deployment options (replicas, actor options, autoscaling) of each;
    serve_config.yaml's `deployments` entries override them on `serve deploy`. Both get `REPLICA_ENV`."""
    engine = with_replica_env({"ray_actor_options": ReportEngine.ray_actor_options, **(engine or {})})
    ingress = with_replica_env({"ray_actor_options": ReportService.ray_actor_options, **(ingress or {})})
    eng = ReportEngine.options(max_ongoing_requests=max_ongoing_requests(cfg, decode), **engine)
    front = ReportService.options(max_ongoing_requests=ingress_max_ongoing(cfg, decode), **ingress)
    return front.bind(eng.bind(cfg, decode, prompt, model), cfg, decode, prompt, model)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The ReportService (ingress) + ReportEngine application from Serve's `args`."""
    return compose(*parse_app_args(args))

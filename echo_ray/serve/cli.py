"""`echo-ray serve`: the report service on one machine (local Ray, Serve HTTP proxy on --host:--port).

Locally the deployment runs with `--num-cpus` (default 1, fractions allowed) and no GPU unless
`--num-gpus` says so, overriding serve_config.yaml's cluster setting of one GPU per replica; the
autoscaling there is a cluster concern, so locally the replica count is fixed (`--replicas`).
The `serve`, `decode` and `prompt` sections of `--config` are used; flags override them. When the
variable named by `serve.auth_token_env` (default ECHO_API_TOKEN) is set in this shell, the API
requires that bearer token.

Usage:
    echo-ray serve --model runs/dcd/final --port 8000
    echo-ray serve --model s3://bucket/echo --config configs/tiny.yaml --replicas 2 --num-cpus 0.5
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from echo_ray.config import load_config, to_dict
from echo_ray.model.checkpoint import check_checkpoint_dir
from echo_ray.serve.app import max_ongoing_requests, parse_app_args

APP_NAME = "echo"


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="run the HTTP report service on local Ray",
                              description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--model", required=True, help="checkpoint directory or s3:// URI")
    p.add_argument("--config", help="echo config YAML (serve, decode and prompt sections)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 to expose it)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--replicas", type=int, default=1)
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per replica; fractions allowed")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per replica (0 on a laptop)")
    p.add_argument("--batching", choices=["continuous", "static"], help="continuous (default) or static baseline")
    p.add_argument("--max-batch-size", type=int, help="requests per batched decode (static batching)")
    p.add_argument("--mode", choices=["onestep", "multistep", "ar"], help="default decode mode")
    p.add_argument("--max-new-tokens", type=int, help="default response token budget")
    p.set_defaults(func=run_serve)
    return p


def app_args(args: argparse.Namespace) -> dict:
    """Serve `args` mapping (as in serve_config.yaml) from the config file and the flags."""
    cfg = load_config(args.config) if args.config else load_config()
    serve_cfg = {**to_dict(cfg.serve), "model": args.model}
    if args.max_batch_size is not None:
        serve_cfg["max_batch_size"] = args.max_batch_size
    if args.batching:
        serve_cfg["batching"] = args.batching
    decode = to_dict(cfg.decode)
    if args.mode:
        decode["mode"] = args.mode
    if args.max_new_tokens is not None:
        decode["max_new_tokens"] = args.max_new_tokens
    return {**serve_cfg, "decode": decode, "prompt": to_dict(cfg.prompt)}


def run_serve(args: argparse.Namespace, wait: bool = True) -> int:
    """Start Ray (or join RAY_ADDRESS), deploy the service at '/', and block until Ctrl-C."""
    import ray
    from ray import serve

    from echo_ray.serve.service import ReportService

    cfg, decode, prompt = parse_app_args(app_args(args))  # config errors before Ray starts
    if not cfg.model.startswith("s3://"):
        check_checkpoint_dir(Path(cfg.model).expanduser())  # a bad path fails here, not in a retrying replica
    if not ray.is_initialized():
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    options: dict = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
    token = os.environ.get(cfg.auth_token_env, "") if cfg.auth_token_env else ""
    if token:  # hand the shell's token to the replicas, also when joining a running Ray via RAY_ADDRESS
        options["runtime_env"] = {"env_vars": {cfg.auth_token_env: token}}
    app = ReportService.options(num_replicas=args.replicas, ray_actor_options=options,
                                max_ongoing_requests=max_ongoing_requests(cfg, decode)).bind(cfg, decode, prompt)  # fmt: skip
    serve.run(app, name=APP_NAME, route_prefix="/")
    print(f"ECHO report service: http://{args.host}:{args.port}/ (API docs at /docs). Ctrl-C to stop.", flush=True)
    if not wait:
        return 0
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        serve.delete(APP_NAME)
    return 0

"""`echo-ray serve`: the report service on one machine (local Ray, Serve HTTP proxy on --host:--port).

Locally the deployment runs with `--num-cpus` (default 1, fractions allowed) and no GPU unless
`--num-gpus` says so, overriding serve_config.yaml's cluster setting of one GPU per replica; the
autoscaling there is a cluster concern, so locally the replica count is fixed (`--replicas`).
The `serve`, `decode` and `prompt` sections of `--config` (and `--set`) are used; flags override
them. Bearer auth: `--auth-token-file` (or `serve.auth_token_file`, a mode-0600 file), or
ECHO_API_TOKEN (`serve.auth_token_env`) exported in this shell when this command starts Ray itself
(the replicas inherit the environment; the token never travels in a runtime_env, which Ray logs).
When it starts Ray, it also installs the proxy's body deadline (`body_guard.py`).

Usage:
    echo-ray serve --model runs/dcd/final --port 8000
    echo-ray serve --model s3://bucket/echo --config configs/tiny.yaml --replicas 2 --num-cpus 0.5
    echo-ray serve --model runs/dcd/final --auth-token-file ~/.echo_token --set serve.body_timeout_s=3
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from echo_ray.commands import add_config_args, config_from_args
from echo_ray.config import to_dict
from echo_ray.model.checkpoint import check_checkpoint_dir
from echo_ray.serve.app import max_ongoing_requests, parse_app_args
from echo_ray.serve.auth import load_token
from echo_ray.serve.body_guard import proxy_env

APP_NAME = "echo"


def add_serve_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("serve", help="run the HTTP report service on local Ray",
                              description=__doc__.split("\n\n")[0])  # fmt: skip
    p.add_argument("--model", required=True, help="checkpoint directory or s3:// URI")
    add_config_args(p)  # --config (serve, decode and prompt sections) and --set
    p.add_argument("--auth-token-file", help="file (mode 0600) holding the bearer token the API requires")
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
    cfg = config_from_args(args)
    serve_cfg = {**to_dict(cfg.serve), "model": args.model}
    for bound in ("max_pixels", "min_pixels"):  # model.* (e.g. from decode.preset) unless serve sets its own
        if serve_cfg[f"image_{bound}"] is None:
            serve_cfg[f"image_{bound}"] = getattr(cfg.model, bound)
    if getattr(args, "auth_token_file", None):
        serve_cfg["auth_token_file"] = str(Path(args.auth_token_file).expanduser().resolve())
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
    token = load_token(cfg)  # an unsafe or missing token file fails here, before Ray starts
    joining = ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))
    if joining and token and not cfg.auth_token_file:
        print(f"echo-ray serve: note: {cfg.auth_token_env} from this shell does not reach a running Ray cluster; "
              "the replicas read it from their node's environment (export it before `ray start`) or use "
              "--auth-token-file", file=sys.stderr)  # fmt: skip
    if not ray.is_initialized():
        if not os.environ.get("RAY_ADDRESS"):
            os.environ.update(proxy_env(cfg))  # the proxy (a Ray worker) inherits these: body deadline
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port, "request_timeout_s": cfg.decode_timeout_s + 60})
    options: dict = {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}
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

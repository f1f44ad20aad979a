"""`echo-ray serve`: the report service on one machine (local Ray, Serve HTTP proxy on --host:--port).

The same two deployments as on a cluster: the ingress (HTTP, images, prompts; `--ingress-replicas`,
`--ingress-cpus`) and the engine (the model; `--replicas`, `--num-cpus`, default 1, and no GPU
unless `--num-gpus` says so, overriding serve_config.yaml's one GPU per engine replica); the
autoscaling there is a cluster concern, so locally the replica counts are fixed.
The `serve`, `decode`, `prompt` and `model` sections of `--config` (and `--set`) are used (the
`model` section, as `model_config`, says how the checkpoint loads); flags override them. Bearer
auth: `--auth-token-file` (or `serve.auth_token_file`, a mode-0600 file), or ECHO_API_TOKEN
(`serve.auth_token_env`) exported in this shell when this command starts Ray itself (the replicas
inherit the environment; the token never travels in a runtime_env, which Ray logs). When it starts
Ray, it also installs the proxy's body deadline (`body_guard.py`) and Serve's request-path settings
(`app.PROXY_ENV`: requests to the ingress by value over gRPC) for the proxy.

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

from echo_ray.config import to_dict
from echo_ray.config.args import add_config_args, config_from_args
from echo_ray.model.checkpoint import check_checkpoint_dir
from echo_ray.serve.app import PROXY_ENV, compose, parse_app_args
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
    p.add_argument("--replicas", type=int, default=1, help="engine replicas (each holds the model)")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per engine replica; fractions allowed")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per engine replica (0 on a laptop)")
    p.add_argument("--ingress-replicas", type=int, default=1, help="ingress replicas (HTTP, images, prompts)")
    p.add_argument("--ingress-cpus", type=float, default=0.5, help="CPUs per ingress replica")
    p.add_argument("--mode", choices=["onestep", "multistep", "ar"], help="default decode mode")
    p.add_argument("--max-new-tokens", type=int, help="default response token budget")
    p.set_defaults(func=run_serve)
    return p


def app_args(args: argparse.Namespace) -> dict:
    """Serve `args` mapping (as in serve_config.yaml) from the config file and the flags."""
    cfg = config_from_args(args)
    serve_cfg = {**to_dict(cfg.serve), "model": args.model}
    if getattr(args, "auth_token_file", None):
        serve_cfg["auth_token_file"] = str(Path(args.auth_token_file).expanduser().resolve())
    decode = to_dict(cfg.decode)
    if args.mode:
        decode["mode"] = args.mode
    if args.max_new_tokens is not None:
        decode["max_new_tokens"] = args.max_new_tokens
    # model_config: how the replicas load --model (dtype, attention, cache, image bounds, e.g. from decode.preset)
    return {**serve_cfg, "decode": decode, "prompt": to_dict(cfg.prompt), "model_config": to_dict(cfg.model)}


def run_serve(args: argparse.Namespace, wait: bool = True) -> int:
    """Start Ray (or join RAY_ADDRESS), deploy the service at '/', and block until Ctrl-C."""
    import ray
    from ray import serve

    cfg, decode, prompt, model = parse_app_args(app_args(args))  # config errors before Ray starts
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
            os.environ.update({**proxy_env(cfg), **PROXY_ENV})  # the proxy (a Ray worker) inherits these
        ray.init(include_dashboard=False)
    serve.start(http_options={"host": args.host, "port": args.port, "request_timeout_s": cfg.decode_timeout_s + 60})
    engine = {"num_replicas": args.replicas, "ray_actor_options": {"num_cpus": args.num_cpus, "num_gpus": args.num_gpus}}
    ingress = {"num_replicas": args.ingress_replicas, "ray_actor_options": {"num_cpus": args.ingress_cpus, "num_gpus": 0}}
    app = compose(cfg, decode, prompt, model, engine, ingress)
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

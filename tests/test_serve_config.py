"""serve_config.yaml against Ray's own schema, the build_app entry's args, and `echo-ray serve`."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import pytest
import yaml

from echo_ray.errors import ConfigError
from echo_ray.serve.app import parse_app_args
from echo_ray.serve.cli import add_serve_parser, app_args, run_serve

SERVE_CONFIG = Path(__file__).resolve().parents[1] / "serve_config.yaml"


def test_serve_config_is_a_valid_deploy_schema_with_gpu_autoscaling():
    from ray.serve.schema import ServeDeploySchema

    raw = yaml.safe_load(SERVE_CONFIG.read_text())
    schema = ServeDeploySchema.model_validate(raw)
    (app,) = schema.applications
    module, _, attr = app.import_path.partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
    cfg, decode, _, model = parse_app_args(app.args)  # the args build_app will receive
    assert cfg.model.startswith("s3://") and decode.mode == "onestep" and decode.cache == "fused"
    assert model.dtype == "bfloat16"
    ingress, engine = app.deployments
    from echo_ray.serve.engine import ReportEngine
    from echo_ray.serve.service import ReportService

    assert (ingress.name, engine.name) == (ReportService.name, ReportEngine.name)
    for dep in (ingress, engine):  # each deployment autoscales on its own
        auto = dep.autoscaling_config
        assert 1 <= auto["min_replicas"] < auto["max_replicas"] and auto["target_ongoing_requests"] > 0
        assert auto["upscale_delay_s"] < auto["downscale_delay_s"]
    assert engine.ray_actor_options.num_gpus == 1 and ingress.ray_actor_options.num_gpus == 0
    assert ingress.ray_actor_options.resources == {"ingress": 1}  # cluster.yaml's CPU ingress nodes
    # continuous batching: Serve's cap, the slots, the queue and the autoscaling target agree
    from echo_ray.serve.app import ingress_max_ongoing, max_ongoing_requests

    assert decode.slots.max_rows >= 1 and cfg.max_queue >= 1 and "batching" not in app.args
    assert engine.max_ongoing_requests == max_ongoing_requests(cfg, decode) > decode.slots.max_rows + cfg.max_queue
    assert 0 < engine.autoscaling_config["target_ongoing_requests"] <= decode.slots.max_rows
    assert ingress.max_ongoing_requests == ingress_max_ongoing(cfg, decode)
    from echo_ray.serve.app import REPLICA_ENV  # Serve's replica tuning reaches both deployments on a cluster too

    assert REPLICA_ENV.items() <= app.runtime_env["env_vars"].items()


def test_compose_gives_both_deployments_the_replica_env_and_keeps_explicit_options():
    from echo_ray.serve.app import REPLICA_ENV, compose

    configs = parse_app_args({"model": "runs/x"})
    mine = {"RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1", "OTHER": "x"}
    app = compose(*configs, engine={"ray_actor_options": {"num_cpus": 2, "runtime_env": {"env_vars": mine}}})
    front = app._bound_deployment  # no public accessor for a bound application's deployments
    engine_app = front._replica_config.init_args[0]  # the engine application the ingress is bound over
    assert front.ray_actor_options["runtime_env"]["env_vars"] == REPLICA_ENV
    assert front.ray_actor_options["num_cpus"] == 0.5  # the ingress's code defaults stay
    eng = engine_app._bound_deployment.ray_actor_options
    assert eng["num_cpus"] == 2 and eng["runtime_env"]["env_vars"] == {**REPLICA_ENV, **mine}


def test_build_app_args_are_strict():
    from echo_ray.serve.app import build_app

    with pytest.raises(ConfigError, match="'model'"):
        parse_app_args({})
    with pytest.raises(ConfigError, match="max_batch"):
        parse_app_args({"model": "m", "max_batch": 4})
    with pytest.raises(ConfigError, match="decode.mode"):
        parse_app_args({"model": "m", "decode": {"mode": "fast"}})
    with pytest.raises(ConfigError, match="max_new_tokens_limit"):
        parse_app_args({"model": "m", "decode": {"max_new_tokens": 600}})
    cfg, _, _, _ = parse_app_args({"model": "m", "max_queue": "4", "decode_timeout_s": "2.5"})  # serve run k=v
    assert (cfg.max_queue, cfg.decode_timeout_s) == (4, 2.5)
    for gone in ("batching", "max_batch_size", "batch_wait_timeout_s"):  # one batching path: continuous
        with pytest.raises(ConfigError, match=gone):
            parse_app_args({"model": "m", gone: "static" if gone == "batching" else 4})
    with pytest.raises(ConfigError, match="row_by_value_max_bytes 4194304 exceeds .*gRPC"):
        parse_app_args({"model": "x", "row_by_value_max_bytes": 4 << 20})
    with pytest.raises(ConfigError, match="row_by_value_max_bytes"):
        parse_app_args({"model": "x", "row_by_value_max_bytes": -1})
    with pytest.raises(ConfigError, match="max_queue"):
        parse_app_args({"model": "m", "max_queue": -1})
    # the loading settings moved to the model section (issue 28): the old keys are named, not ignored
    with pytest.raises(ConfigError, match="'dtype' is no longer a serve setting; set model_config.dtype"):
        parse_app_args({"model": "m", "dtype": "bfloat16"})
    with pytest.raises(ConfigError, match="'image_min_pixels'.*model_config.min_pixels"):
        parse_app_args({"model": "m", "image_min_pixels": 3136})
    with pytest.raises(ConfigError, match="model_config.dtype"):
        parse_app_args({"model": "m", "model_config": {"dtype": "int8"}})
    _, _, _, model = parse_app_args({"model": "m", "model_config": {"attn_implementation": "eager", "min_pixels": 3136}})
    assert (model.attn_implementation, model.min_pixels, model.dtype) == ("eager", 3136, "float32")
    app = build_app({"model": "m"})  # binding loads nothing
    assert type(app).__name__ == "Application"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="echo-ray")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_flags_override_config(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("serve:\n  max_images: 2\ndecode:\n  max_new_tokens: 40\n")
    args = _parse(["serve", "--model", "ck", "--config", str(cfg_file), "--mode", "ar", "--ingress-replicas", "3"])
    assert args.func is run_serve
    out = app_args(args)
    assert (out["model"], out["max_images"], args.ingress_replicas) == ("ck", 2, 3)
    assert (out["decode"]["mode"], out["decode"]["max_new_tokens"]) == ("ar", 40)
    assert out["model_config"]["dtype"] == "float32" and out["model_config"]["max_pixels"] is None
    # the model section reaches the replicas: a preset's image bounds, attention and cache directory
    cfg_file.write_text("model:\n  attn_implementation: eager\n  cache_dir: /tmp/echo_cache\n")
    args = _parse(["serve", "--model", "ck", "--config", str(cfg_file), "--set", "decode.preset=echo-reference"])
    _, _, _, model = parse_app_args(app_args(args))
    assert (model.attn_implementation, model.cache_dir) == ("eager", "/tmp/echo_cache")
    assert (model.max_pixels, model.min_pixels) == (2_250_000, 256 * 28 * 28)
    for removed in ("dtype: bfloat16", "image_max_pixels: 50000", "image_min_pixels: 3136"):  # now model.*
        cfg_file.write_text(f"serve:\n  {removed}\n")
        with pytest.raises(ConfigError, match=f"serve.{removed.split(':')[0]}"):
            app_args(_parse(["serve", "--model", "ck", "--config", str(cfg_file)]))



def test_echo_ray_serve_is_registered_and_refuses_a_missing_model_before_starting_ray(tmp_path):
    from echo_ray.cli import build_parser
    from echo_ray.errors import InputError

    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "missing")])
    assert args.func is run_serve
    with pytest.raises(InputError, match="checkpoint directory not found"):
        run_serve(args)

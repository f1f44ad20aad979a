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
    cfg, decode, _ = parse_app_args(app.args)  # the args build_app will receive
    assert cfg.model.startswith("s3://") and decode.mode == "onestep" and decode.cache == "fused"
    (dep,) = app.deployments
    from echo_ray.serve.service import ReportService

    assert dep.name == ReportService.name
    auto = dep.autoscaling_config
    assert 1 <= auto["min_replicas"] < auto["max_replicas"] and auto["target_ongoing_requests"] > 0
    assert auto["upscale_delay_s"] < auto["downscale_delay_s"]
    assert dep.ray_actor_options.num_gpus == 1
    # continuous batching: Serve's cap, the slots, the queue and the autoscaling target agree
    from echo_ray.serve.app import max_ongoing_requests

    assert cfg.batching == "continuous" and decode.slots.max_rows >= 1 and cfg.max_queue >= 1
    assert dep.max_ongoing_requests == max_ongoing_requests(cfg, decode) > decode.slots.max_rows + cfg.max_queue
    assert 0 < auto["target_ongoing_requests"] <= decode.slots.max_rows


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
    cfg, _, _ = parse_app_args({"model": "m", "max_batch_size": "4", "decode_timeout_s": "2.5"})  # serve run k=v
    assert (cfg.max_batch_size, cfg.decode_timeout_s) == (4, 2.5)
    with pytest.raises(ConfigError, match="batching"):
        parse_app_args({"model": "m", "batching": "dynamic"})
    with pytest.raises(ConfigError, match="max_queue"):
        parse_app_args({"model": "m", "max_queue": -1})
    app = build_app({"model": "m"})  # binding loads nothing
    assert type(app).__name__ == "Application"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="echo-ray")
    add_serve_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_flags_override_config(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("serve:\n  max_images: 2\ndecode:\n  max_new_tokens: 40\n")
    args = _parse(["serve", "--model", "ck", "--config", str(cfg_file), "--mode", "ar", "--max-batch-size", "3"])
    assert args.func is run_serve
    out = app_args(args)
    assert (out["model"], out["max_images"], out["max_batch_size"]) == ("ck", 2, 3)
    assert (out["decode"]["mode"], out["decode"]["max_new_tokens"]) == ("ar", 40)



def test_echo_ray_serve_is_registered_and_refuses_a_missing_model_before_starting_ray(tmp_path):
    from echo_ray.cli import build_parser
    from echo_ray.errors import InputError

    args = build_parser().parse_args(["serve", "--model", str(tmp_path / "missing")])
    assert args.func is run_serve
    with pytest.raises(InputError, match="checkpoint directory not found"):
        run_serve(args)

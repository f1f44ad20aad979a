"""Typed config: strict loading (unknown keys name their path), overrides, saved next to outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from echo_ray.config import CONFIG_FILENAME, EchoConfig, load_config, save_config, to_dict
from echo_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["tiny.yaml", "lingshu7b.yaml"])
def test_presets_load(name: str) -> None:
    cfg = load_config(REPO / "configs" / name)
    assert isinstance(cfg, EchoConfig)
    assert cfg.model.block_size > 0


def test_lingshu_preset_names_gpu_settings() -> None:
    cfg = load_config(REPO / "configs" / "lingshu7b.yaml")
    assert cfg.model.path.startswith("s3://") and cfg.model.dtype == "bfloat16"
    d = cfg.train.distributed
    assert d.use_gpu and d.zero_stage == 3 and d.bf16 and d.activation_checkpointing
    # ZeRO-3 keeps no weight average (echo_ray.train.ema): the preset turns DCD's off, so every stage passes
    from echo_ray.train.backends import check_average

    for stage in ("cpt", "rad", "dcd"):
        check_average(d.backend, d, getattr(cfg.train, stage).ema_decay, f"train.{stage}.ema_decay")


def test_unknown_key_is_named(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  rad:\n    max_stepz: 3\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.rad\.max_stepz'"):
        load_config(p)
    p.write_text("bogus: 1\n")
    with pytest.raises(ConfigError, match="'bogus'"):
        load_config(p)


def test_type_errors_and_literals(tmp_path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  block_size: eight\n")
    with pytest.raises(ConfigError, match="model.block_size"):
        load_config(p)
    p.write_text("decode:\n  mode: twostep\n")
    with pytest.raises(ConfigError, match="decode.mode"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")


def test_overrides_and_roundtrip(tmp_path) -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml", {"train.rad.max_steps": 3, "optim_unused": None} if False else {"train.rad.max_steps": 3})
    assert cfg.train.rad.max_steps == 3
    path = save_config(cfg, tmp_path)
    assert path.name == CONFIG_FILENAME
    again = load_config(path)
    assert again == cfg


def test_setting_one_key_keeps_the_section_defaults() -> None:
    """train.dcd defaults to split 'dcd' and output runs/dcd; touching one key must not reset them."""
    cfg = load_config(None, {"train.dcd.data": "somewhere", "train.rad.max_steps": 3})
    assert cfg.train.dcd.data == "somewhere"
    assert cfg.train.dcd.split == "dcd" and cfg.train.dcd.output_dir == "runs/dcd"
    assert cfg.train.rad.output_dir == "runs/rad" and cfg.train.rad.max_steps == 3


@pytest.mark.parametrize("override,message", [
    ({"train.rad.noise.t_min": 0.9, "train.rad.noise.t_max": 0.5}, "train.rad.noise: needs 0 < t_min <= t_max"),
    ({"train.dcd.loss.eos_weight": -1}, "'train.dcd.loss.eos_weight': input should be greater than or equal to 0"),
    ({"train.dcd.loss.target_temperature": 0}, "'train.dcd.loss.target_temperature': input should be greater than 0"),
    ({"train.dcd.loss.context_noise": 1.0}, "'train.dcd.loss.context_noise': input should be less than 1"),
    ({"train.rad.noise.context": -0.1}, "'train.rad.noise.context': input should be greater than or equal to 0"),
    ({"train.cpt.max_steps": 0}, "'train.cpt.max_steps': input should be greater than 0"),
    ({"train.distributed.zero_stage": 5}, "'train.distributed.zero_stage': input should be less than or equal to 3"),
    ({"train.distributed.bf16": True}, "train.distributed: bf16 needs use_gpu: true"),
    ({"train.dcd_teacher.teacher_cpus": 0}, "train.dcd_teacher: each teacher needs some CPU"),
    ({"serve.max_queue": -1}, "'serve.max_queue': input should be greater than or equal to 0"),
    ({"serve.foo": 1}, "unknown config key 'serve.foo' \\(valid here: auth_token_env, "),
    ({"normalize.sources": [{"name": "x", "bogus": 1}]}, "unknown config key 'normalize.sources\\[0\\].bogus'"),
])  # fmt: skip
def test_section_ranges_are_checked_where_loaded(override, message) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)


def test_stage_configs_are_typed_and_the_teacher_holds_no_loss_weights(tmp_path) -> None:
    from echo_ray.config import CptConfig, DcdConfig, DcdLossConfig, RadConfig

    cfg = load_config(None, {"train.dcd.loss.weight_schedule": "flat", "train.rad.noise.t_min": 0.4})
    assert isinstance(cfg.train.cpt, CptConfig) and isinstance(cfg.train.rad, RadConfig)
    assert isinstance(cfg.train.dcd, DcdConfig) and cfg.train.dcd.loss == DcdLossConfig(weight_schedule="flat")
    assert cfg.train.rad.noise.t_min == 0.4 and cfg.train.dcd.split == "dcd"
    with pytest.raises(ConfigError, match="unknown config key 'train.dcd_teacher.eos_weight'"):
        load_config(None, {"train.dcd_teacher.eos_weight": 1.0})
    path = save_config(cfg, f"{tmp_path}/nested")  # the one writer: creates the directory, round-trips
    assert load_config(path) == cfg


def test_strings_coerce_to_the_field_types() -> None:
    """`serve run app key=value` and `--set` hand strings; lax validation converts them or names the key."""
    cfg = load_config(None, {"serve.max_queue": "5", "train.rad.noise.t_min": "0.4", "decode.slots.cuda_graphs": "false"})
    assert cfg.serve.max_queue == 5 and cfg.train.rad.noise.t_min == 0.4 and cfg.decode.slots.cuda_graphs is False
    from echo_ray.config import ServeConfig, from_dict

    serve = from_dict(ServeConfig, {"max_images": "3", "decode_timeout_s": "2.5"}, "serve")
    assert (serve.max_images, serve.decode_timeout_s) == (3, 2.5)
    with pytest.raises(ConfigError, match="'serve.max_images': input should be a valid integer"):
        from_dict(ServeConfig, {"max_images": "four"}, "serve")


def test_every_default_round_trips_through_plain_data() -> None:
    from echo_ray.config import from_dict, to_dict

    cfg = load_config(REPO / "configs" / "lingshu7b.yaml")
    plain = to_dict(cfg)
    assert plain["train"]["cpt"]["optim"]["betas"] == [0.9, 0.95]  # tuples become lists
    assert from_dict(EchoConfig, plain) == cfg and from_dict(EchoConfig, to_dict(EchoConfig())) == EchoConfig()


def test_sections_built_in_code_are_checked_on_demand() -> None:
    from echo_ray.config import DistributedConfig, RadConfig, check_section

    assert check_section(RadConfig(max_steps=3), "train.rad").max_steps == 3
    with pytest.raises(ConfigError, match="'train.rad.max_steps': input should be greater than 0, got 0"):
        check_section(RadConfig(max_steps=0), "train.rad")
    with pytest.raises(ConfigError, match="train.distributed: bf16 needs use_gpu"):
        check_section(DistributedConfig(bf16=True), "train.distributed")


def _dcd_recipe(cfg) -> dict:
    d, t = to_dict(cfg.train.dcd), to_dict(cfg.train.dcd_teacher)
    return {"loss": d["loss"], "optim": d["optim"], "batch_size": d["batch_size"], "grad_accum": d["grad_accum"],
            "keep_best": d["keep_best"], **{k: t[k] for k in ("rounds", "prompts_per_round", "epochs", "top_k",
                                                              "teacher_steps", "teacher_batch_size")}}  # fmt: skip


def test_one_dcd_recipe_for_defaults_tiny_preset_and_benchmark(tmp_path) -> None:
    """Issue 31: load_config(None) (what `--config` defaults to), configs/tiny.yaml (the demo's) and
    benchmarks/dcd.py train DCD with the same settings; the benchmark overrides one only by a flag."""
    import importlib.util

    default = _dcd_recipe(load_config(None))
    assert _dcd_recipe(load_config(REPO / "configs" / "tiny.yaml")) == default
    assert default["loss"]["target_temperature"] == 0.25 and default["epochs"] == 8
    spec = importlib.util.spec_from_file_location("bench_dcd", REPO / "benchmarks" / "dcd.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    args = bench.parse_args([])
    cfg = load_config(None, bench.dcd_overrides(args, "teacher", "data", tmp_path))
    assert _dcd_recipe(cfg) == default
    flagged = bench.parse_args(["--lr", "5e-4", "--set", "train.dcd.loss.target_temperature=1.0"])
    cfg = load_config(None, bench.dcd_overrides(flagged, "teacher", "data", tmp_path))
    assert cfg.train.dcd.optim.lr == 5e-4 and cfg.train.dcd.loss.target_temperature == 1.0

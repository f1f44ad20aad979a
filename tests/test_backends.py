"""Engine registry, DeepSpeed config, LR schedule, and the DDP engine's step and resume on a tiny model."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest
import torch

from echo_ray.config import DistributedConfig, OptimConfig, PromptConfig
from echo_ray.data.phantom_dataset import phantom_rows
from echo_ray.errors import ConfigError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.train.backends import DDPEngine, lr_factor, make_engine, resolve_backend
from echo_ray.train.cpt import CptStage
from echo_ray.train.ds_engine import deepspeed_config
from echo_ray.train.examples import Limits
from echo_ray.train.stage import ModelParts, StageModule


def test_lr_schedule_warms_up_then_decays_to_a_tenth():
    assert [lr_factor(s, 4, 20) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20) == pytest.approx(1.0)
    assert lr_factor(20, 4, 20) == pytest.approx(0.1)
    vals = [lr_factor(s, 4, 20) for s in range(4, 21)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert lr_factor(0, 0, 10) == pytest.approx(1.0)


def test_deepspeed_config():
    dist = DistributedConfig(zero_stage=3, bf16=True)
    cfg = deepspeed_config(dist, OptimConfig(lr=2e-5, grad_clip=0.5), micro_batch=4, grad_accum=2, world_size=8, on_gpu=True)
    assert cfg["train_batch_size"] == 64 and cfg["gradient_accumulation_steps"] == 2
    assert cfg["zero_optimization"] == {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True}
    assert cfg["optimizer"]["params"]["torch_adam"] is True and cfg["optimizer"]["type"] == "AdamW"
    assert cfg["bf16"]["enabled"] and not cfg["fp16"]["enabled"] and cfg["gradient_clipping"] == 0.5
    cpu = deepspeed_config(DistributedConfig(zero_stage=2, bf16=True), OptimConfig(), 1, 1, 2, on_gpu=False)
    assert not cpu["bf16"]["enabled"] and cpu["zero_optimization"] == {"stage": 2}


def test_muon_module_imports_without_compiling():
    """ZeRO start-up imports DeepSpeed's Muon module with its torch.compile deferred (ds_engine),
    the real class intact and DeepSpeed's compiler hook restored; a Muon config is left alone."""
    code = textwrap.dedent("""
        import sys
        from deepspeed.runtime import compiler
        from echo_ray.train.ds_engine import MUON_MODULE, _import_muon_without_compiling
        real = compiler.compile
        _import_muon_without_compiling({"optimizer": {"type": "MuonWithAuxAdam"}})
        assert MUON_MODULE not in sys.modules
        _import_muon_without_compiling({"optimizer": {"type": "AdamW"}})
        import torch
        muon = sys.modules[MUON_MODULE]
        assert issubclass(muon.MuonWithAuxAdam, torch.optim.Optimizer)
        assert compiler.compile is real
        assert "torch._inductor.compile_fx" not in sys.modules, "inductor imported"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]


def test_backend_registry_falls_back_to_ddp(monkeypatch):
    assert resolve_backend("ddp") == "ddp"
    assert resolve_backend("deepspeed") == "deepspeed"
    # deepspeed is installed here; simulate the `train` extra being absent
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "deepspeed" else real(name, *a))
    assert resolve_backend("deepspeed") == "ddp"
    with pytest.raises(ValueError, match="unknown training backend"):
        resolve_backend("horovod")


def ddp_engine(ckpt_dir, rows: list[dict], ema_decay: float = 0.0):
    """A fresh DDP engine on the tiny checkpoint (CPT stage) and one batch of `rows`."""
    ck = load_checkpoint(str(ckpt_dir))
    parts = ModelParts(ck.model.train(), ck.tokenizer, ck.image_processor, ck.mask_id, 8, PromptConfig())
    stage = CptStage(Limits(512, 256))
    engine = make_engine("ddp", StageModule(parts.model, stage), DistributedConfig(backend="ddp"),
                         OptimConfig(lr=3e-3, warmup_steps=1), 10, 2, 1, torch.device("cpu"), ema_decay)  # fmt: skip
    return engine, stage.build_batch(rows, parts, torch.Generator())


def test_ddp_engine_steps_and_resumes_exactly(tiny_ckpt_dir, phantom_dir, tmp_path):
    rows = phantom_rows(phantom_dir)[:2]
    engine, batch = ddp_engine(tiny_ckpt_dir, rows)
    assert isinstance(engine, DDPEngine)
    losses = [engine.train_step([batch]).loss for _ in range(3)]
    assert losses[-1] < losses[0]
    engine.save_state(tmp_path / "engine")
    nxt = engine.train_step([batch])
    other, batch2 = ddp_engine(tiny_ckpt_dir, rows)
    other.load_state(tmp_path / "engine")
    again = other.train_step([batch2])
    assert again.loss == pytest.approx(nxt.loss, rel=1e-6) and again.lr == pytest.approx(nxt.lr)
    assert nxt.grad_norm > 0 and set(nxt.metrics) == {"response_tokens"}
    sd = other.export_state_dict()
    assert sd is not None and "lm_head.weight" in sd


def test_ddp_engine_exports_the_average_and_resumes_it(tiny_ckpt_dir, phantom_dir, tmp_path):
    """With ema_decay the export is the moving average (echo_ray.train.ema), the trained weights stay in
    the model, and a resumed engine continues both exactly."""
    rows = phantom_rows(phantom_dir)[:2]
    engine, batch = ddp_engine(tiny_ckpt_dir, rows, 0.9)
    for _ in range(3):
        engine.train_step([batch])
    assert engine.ema is not None and engine.ema.updates == 3
    raw = {k: v.detach().clone() for k, v in engine.hf_model.state_dict().items()}
    sd = engine.export_state_dict()
    name = "lm_head.weight"
    assert not torch.equal(sd[name], raw[name])  # the average, not the last step
    idx = [i for i, p in enumerate(engine.trainable()) if p is engine.hf_model.lm_head.weight][0]
    assert torch.equal(sd[name], engine.ema.average[idx])
    assert torch.equal(engine.hf_model.state_dict()[name], raw[name])  # export left the trained weights in place
    engine.save_state(tmp_path / "engine")
    nxt = engine.train_step([batch])
    other, batch2 = ddp_engine(tiny_ckpt_dir, rows, 0.9)
    other.load_state(tmp_path / "engine")
    assert other.ema.updates == 3
    again = other.train_step([batch2])
    assert again.loss == pytest.approx(nxt.loss, rel=1e-6)
    assert all(torch.allclose(a, b) for a, b in zip(other.ema.average, engine.ema.average))


def test_zero3_refuses_an_average(tiny_ckpt_dir):
    ck = load_checkpoint(str(tiny_ckpt_dir))
    module = StageModule(ck.model, CptStage(Limits(512, 256)))
    with pytest.raises(ConfigError, match="zero_stage"):
        make_engine("deepspeed", module, DistributedConfig(zero_stage=3), OptimConfig(), 5, 1, 1, torch.device("cpu"), 0.9)

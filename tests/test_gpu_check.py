"""The accelerator check's CPU rehearsal: `bash benchmarks/gpu_check.sh --dry-run` runs every part at a
reduced 7B shape and prints one JSON line. With Ray and DeepSpeed hidden (as on the lent machines'
image, which has pytest) their parts skip with a reason, never crash; where they are installed here
their parts run too, and with pytest hidden the engine check runs its body directly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARTS = {"engine_gpu_tests", "train_torch", "train_deepspeed", "ray_teacher_pool", "decode_7b"}
KINDS = ("ar", "multistep_fused", "onestep_vanilla", "onestep_fused")


def gpu_check(tmp_path: Path, *args: str) -> dict:
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--log-dir", str(tmp_path), *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)  # fmt: skip
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("{"), f"no JSON line (rc {proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    out = json.loads(last)
    assert proc.returncode == (0 if out["ok"] else 1)
    assert json.loads((tmp_path / "gpu_check.json").read_text(encoding="utf-8")) == out  # the copy beside the logs
    return out


@pytest.fixture(scope="module")
def device_image(tmp_path_factory) -> dict:
    """The whole dry run as on the device image: no Ray, no DeepSpeed (pytest is there)."""
    return gpu_check(tmp_path_factory.mktemp("gpu_check"), "--without", "ray,deepspeed")


def test_every_part_ran_or_skipped_with_a_reason(device_image) -> None:
    out = device_image
    parts = out["parts"]
    assert set(parts) == PARTS
    failed = {k: v for k, v in parts.items() if v["status"] not in ("ran", "skipped")}
    assert not failed, json.dumps(failed)[:3000]
    assert out["ok"] and out["dry_run"] and out["numbers_finite"]
    json.dumps(out, allow_nan=False)  # raises on any NaN or infinity
    assert out["environment"]["packages"]["ray"] is None and out["environment"]["hidden"] == ["deepspeed", "ray"]
    for name, pkg in (("train_deepspeed", "deepspeed"), ("ray_teacher_pool", "ray")):
        assert parts[name]["status"] == "skipped" and f"{pkg} is not installed" in parts[name]["reason"]


def test_engine_gpu_tests_under_pytest(device_image) -> None:
    tests = device_image["parts"]["engine_gpu_tests"]["result"]  # pytest's junit XML, read back
    assert tests["tests"] == 1 and tests["failures"] == tests["errors"] == 0
    assert tests["skipped"] == 1 and "CUDA" in tests["skip_reasons"][0]  # CUDA-only: skips on the CPU


def test_training_step_of_each_stage_without_ray(device_image) -> None:
    res = device_image["parts"]["train_torch"]["result"]
    assert res["ok"] and res["imported"] == []  # neither ray nor deepspeed was imported
    assert set(res["stages"]) == {"cpt", "rad", "dcd"}
    for stage, r in res["stages"].items():
        assert r["backend"] == "DDPEngine" and r["finite"] and r["weights_changed"], stage
        assert r["loss"] > 0 and r["grad_norm"] > 0, stage
    assert res["stages"]["dcd"]["teacher_s"] > 0  # DCD trained on records its in-process teacher decoded


def test_decode_at_the_reduced_7b_shape(device_image) -> None:
    res = device_image["parts"]["decode_7b"]["result"]
    assert (res["shape"], res["layers"], res["vocab"], res["prompt_len"]) == ("7b", 1, 2048, 32)
    assert res["unmeasured"] == []
    want = {f"{p}{k}@{b}" for p in ("", "eager_", "reference_") for k in KINDS for b in (1, 2)}
    assert set(res["results"]) == want
    assert all(r["tokens"] == r["batch"] * res["max_new_tokens"] for r in res["results"].values())
    # on the CPU both engines run eager: their tokens must agree exactly
    assert res["graphs_match_eager"] == {f"{k}@{b}": True for k in KINDS for b in (1, 2)}
    assert res["macs_per_token"]["body_per_position"] > 2e8  # the real widths: ~233M weights per layer


@pytest.mark.skipif(not (importlib.util.find_spec("ray") and importlib.util.find_spec("deepspeed")),
                    reason="ray and deepspeed are not both installed here")  # fmt: skip
def test_ray_and_deepspeed_parts_and_the_engine_check_without_pytest(tmp_path) -> None:
    out = gpu_check(tmp_path, "--parts", "engine_gpu_tests,train_deepspeed,ray_teacher_pool", "--without", "pytest")
    parts = out["parts"]
    assert set(parts) == {"engine_gpu_tests", "train_deepspeed", "ray_teacher_pool"}
    assert out["ok"], json.dumps(parts)[:3000]
    engine = parts["engine_gpu_tests"]
    assert "pytest is not installed" in engine["note"] and engine["result"]["graphs_match_eager"] is True
    ds = parts["train_deepspeed"]["result"]
    assert {r["backend"] for r in ds["stages"].values()} == {"DeepSpeedEngine"} and ds["ok"]
    ray_part = parts["ray_teacher_pool"]["result"]
    assert ray_part["same_as_in_process"] and ray_part["records"] == 4


def test_without_makes_packages_absent(tmp_path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('ray') is None and importlib.util.find_spec('json') is not None\n"
        "try:\n    import ray.train\nexcept ModuleNotFoundError as e:\n    print('absent:', e.name)\n"
        "print(sys.argv[1:])\n",
        encoding="utf-8",
    )
    proc = subprocess.run([sys.executable, "benchmarks/without.py", "ray", str(probe), "x"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["absent: ray", "['x']"]

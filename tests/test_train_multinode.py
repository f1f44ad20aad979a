"""A stage on a simulated two-node Ray cluster with shared (S3) storage; DDP backend.

Runs tests/multinode_train.py in a subprocess because it starts its own Ray cluster, which cannot
coexist with the session `ray_cluster` in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from echo_ray.data.phantom import write_phantom
from echo_ray.data.phantom_dataset import write_phantom_dataset

HELPER = Path(__file__).with_name("multinode_train.py")


def test_cpt_on_two_nodes_with_s3_storage(tiny_ckpt_dir, tmp_path):
    write_phantom(tmp_path / "phantom", 12, seed=5)
    data = write_phantom_dataset(tmp_path / "phantom", tmp_path / "normalized")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "AWS_"))}
    proc = subprocess.run([sys.executable, str(HELPER), str(data), str(tiny_ckpt_dir), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["nodes"] == 2
    assert out["steps"] == [1, 2]
    assert out["final"] == "s3://echo/runs/cpt/final"
    assert "model.safetensors" in out["final_files"] and "config.json" in out["final_files"]
    assert out["checkpoint"].startswith("echo/ray/cpt/checkpoint_") and out["ckpt_state"]
    assert out["mask_id"] is not None and out["block_size"] == 8
    assert out["tb"]

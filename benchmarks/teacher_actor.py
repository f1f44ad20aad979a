"""The DCD teacher as a Ray actor: the accelerator check's Ray part (benchmarks/gpu_check.sh).

A `TeacherPool` of one actor (one GPU where the machine has one, else a CPU) loads the tiny preset's
checkpoint and decodes a batch of phantom studies; the same batch decoded in-process by a
`TeacherWorker` must give the same tokens, commit steps and top-K ids. Needs Ray (the check skips this
part where Ray is not installed).

Usage:
    python benchmarks/teacher_actor.py
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

from train_step import TINY, make_inputs, teacher_job  # noqa: E402

from echo_ray.config import load_config  # noqa: E402
from echo_ray.model.checkpoint import resolve_device  # noqa: E402


def same_records(a: list, b: list) -> bool:
    keys = ("tokens", "commit_step", "topk_ids")
    same = (np.array_equal(getattr(x, k), getattr(y, k)) for x, y in zip(a, b) for k in keys)
    return len(a) == len(b) and all(same)


def main() -> int:
    import argparse

    import ray

    from echo_ray.train.dcd.pool import TeacherPool
    from echo_ray.train.dcd.teacher import TeacherWorker

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(TINY), help="the preset YAML (model, prompt and teacher settings)")
    cfg = load_config(ap.parse_args().config)
    device = resolve_device("auto")
    gpus = 1 if device.type == "cuda" else 0
    with tempfile.TemporaryDirectory(prefix="echo_teacher_actor_") as d:
        ckpt, corpus = make_inputs(cfg, Path(d), 4)
        spec, tasks = teacher_job(cfg, ckpt, corpus, 4, "auto")
        t0 = time.perf_counter()
        env = {k: os.environ[k] for k in ("PYTHONPATH", "HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM") if k in os.environ}
        # address="local": a cluster of its own, never one that another process on this machine runs
        ray.init(address="local", num_cpus=2, num_gpus=gpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": env})  # fmt: skip
        try:
            pool = TeacherPool(TeacherWorker, (spec,), 1, num_cpus=1, num_gpus=gpus)
            remote = next(iter(pool.map([(0, tasks)])))
            pool.shutdown()
        finally:
            ray.shutdown()
        actor_s = time.perf_counter() - t0
        local = TeacherWorker(spec, name="local").decode(tasks, round_index=0)
    out = {"device": torch.cuda.get_device_name() if gpus else "cpu", "actor_gpus": gpus,
           "records": len(remote.records), "failures": remote.failures, "actor_s": actor_s,
           "same_as_in_process": same_records(remote.records, local.records)}  # fmt: skip
    out["ok"] = out["same_as_in_process"] and not remote.failures and len(remote.records) == len(tasks)
    print(json.dumps(out))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

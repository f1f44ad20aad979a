"""Run one training stage as a Ray Train job: checks, TorchTrainer, final export.

`launch(cfg, "cpt" | "rad")`:
1. `plan_stage` checks the config, dataset and model on the driver (EchoError before any worker);
2. the Parquet split is read with Ray Data once (materialized in file order: rows are text and
   image paths) and streamed to the workers every epoch (`datasets=`; an equal, order-preserving
   split without locality hints, so the data position of a resumed run is exact);
3. a `TorchTrainer` runs `echo_ray.train.loop.train_func` on `num_workers` workers (gloo on CPU,
   NCCL on GPUs) with `CheckpointConfig(num_to_keep, score "loss", min)` and
   `FailureConfig(max_failures)`; checkpoints go to `train.distributed.storage_path` (local or
   s3://, default `<output_dir>/ray`). Rerunning the same config continues the same Ray Train run
   from its latest checkpoint. The controller's poll period is `report_poll_s` (a
   `ray.train.report` waits until the previous one has been collected, so the loop reports every
   `report_every` steps and at checkpoints, not every step);
4. the model of the final checkpoint is copied to `<output_dir>/final` (HF-loadable) and the
   resolved config is written to `<output_dir>/echo_config.yaml`.

The environment variable ECHO_TRAIN_FAULT="rank:step" makes that worker exit once at that step
(a marker file in output_dir remembers it), which is how the tests kill a worker mid-run.

Usage:
    outcome = launch(load_config("configs/tiny.yaml"), "cpt")
    outcome.final_dir, outcome.metrics
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from typing import Any


from echo_ray.config import EchoConfig, save_config
from echo_ray.errors import ConfigError, EchoError
from echo_ray.storage import copy_tree, join, shown_path
from echo_ray.train.checkpointing import MODEL_DIR
from echo_ray.train.job import FaultSpec
from echo_ray.train.preflight import StagePlan, plan_stage, stage_config
from echo_ray.train.rows import DatasetRows, RowSource

log = logging.getLogger(__name__)
FAULT_ENV = "ECHO_TRAIN_FAULT"
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train's controller poll period
# Forwarded to workers so they reach the same S3 endpoint and stay offline; never credentials.
WORKER_ENV = ("AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")


@dataclass
class TrainOutcome:
    stage: str
    final_dir: str
    checkpoint: str
    metrics: dict[str, Any]


def fault_from_env(output_dir: str) -> FaultSpec | None:
    spec = os.environ.get(FAULT_ENV, "")
    if not spec:
        return None
    try:
        rank, step = (int(x) for x in spec.split(":"))
    except ValueError:
        raise ConfigError(f"{FAULT_ENV} must be 'rank:step', got {spec!r}") from None
    return FaultSpec(rank, step, join(output_dir, ".fault_injected"))


def build_trainer(plan: StagePlan, dataset, rows: RowSource = DatasetRows()):
    """The TorchTrainer for a plan (no resources are taken until `fit()`).

    `rows`: where the loop reads rows (echo_ray.train.rows): the `dataset` shard by default, or a
    stage's own stream (DCD's teacher stream, with no dataset).
    """
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from echo_ray.train.loop import train_func

    d, s = plan.job.dist, plan.job.cfg
    resources = {"CPU": d.cpus_per_worker, **({"GPU": 1} if d.use_gpu else {}), **d.worker_resources}
    env = {k: os.environ[k] for k in WORKER_ENV if k in os.environ} | {"TOKENIZERS_PARALLELISM": "false"}
    return TorchTrainer(
        train_func,
        train_loop_config={"job": plan.job, "rows": rows},
        torch_config=TorchConfig(backend="nccl" if d.use_gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=d.num_workers, use_gpu=d.use_gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=plan.job.stage,
            storage_path=plan.storage_path,
            checkpoint_config=CheckpointConfig(
                num_to_keep=s.keep_checkpoints, checkpoint_score_attribute="loss", checkpoint_score_order="min"
            ),
            failure_config=FailureConfig(max_failures=d.max_failures),
            worker_runtime_env={"env_vars": env},
        ),
        datasets={"train": dataset} if dataset is not None else None,
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True), enable_shard_locality=False),
    )


@contextlib.contextmanager
def _controller_env(name: str, value: str):
    """Set an env var Ray Train propagates to its controller for one `fit()`, unless the user set it."""
    if name in os.environ:
        yield
        return
    os.environ[name] = value
    try:
        yield
    finally:
        os.environ.pop(name, None)


def _worker_error(err: Exception) -> EchoError | None:
    """The user-facing error behind a failed run (e.g. an unreadable image in some row), if any."""
    for e in getattr(err, "worker_failures", {}).values():
        cause = e
        while cause is not None:
            if isinstance(cause, EchoError):
                return cause
            cause = cause.__cause__ or getattr(cause, "cause", None)
    return None


def run_trainer(plan: StagePlan, dataset=None, rows: RowSource = DatasetRows()):
    """`build_trainer(...).fit()` with the controller poll period set; a failed run whose cause is
    bad input (an EchoError in a worker) re-raises that error. Returns Ray Train's Result."""
    from ray.train import TrainingFailedError

    try:
        with _controller_env(POLL_ENV, str(plan.job.dist.report_poll_s)):
            return build_trainer(plan, dataset, rows).fit()
    except TrainingFailedError as e:
        user = _worker_error(e)
        if user is not None:
            raise type(user)(f"train {plan.job.stage}: {user}") from None
        raise


def launch(cfg: EchoConfig, stage: str) -> TrainOutcome:
    """Check, train, export. Raises EchoError on bad input (before workers start when possible)."""
    import ray

    plan = plan_stage(cfg, stage, fault_from_env(stage_config(cfg, stage).output_dir))
    save_config(cfg, plan.output_dir)
    if not ray.is_initialized():
        ray.init()
    dataset = _materialized(ray.data.read_parquet(plan.data_files, columns=plan.columns))
    log.info("%s: %d rows from %d shard(s), %d workers", stage, plan.n_rows, len(plan.data_files), plan.job.dist.num_workers)
    return export_final(plan, run_trainer(plan, dataset))


def _materialized(dataset):
    """The split's rows (text and image paths, not pixels) held in the object store, in file order.

    Streamed as is, every epoch re-runs the Parquet read tasks before its first batch (~5 s per
    epoch on a 2-core node, 45 s of a 284 s demo CPT); the order is kept so that a resumed run's
    data position means the same rows."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    keep = ctx.execution_options.preserve_order
    ctx.execution_options.preserve_order = True
    try:
        return dataset.materialize()
    finally:
        ctx.execution_options.preserve_order = keep


def export_final(plan: StagePlan, result) -> TrainOutcome:
    """Copy the model of the run's final checkpoint to `<output_dir>/final` (HF-loadable)."""
    ckpt, stage = result.checkpoint, plan.job.stage
    final = copy_tree(ckpt.filesystem, join(ckpt.path, MODEL_DIR), join(plan.output_dir, "final"))
    print(f"[{stage}] final model: {shown_path(final)}", flush=True)
    return TrainOutcome(stage, final, str(ckpt.path), dict(result.metrics or {}))

"""Run Stage 3 (DCD) as a Ray job: checks, teacher pool, streaming feeder, Ray Train student, export.

`run_dcd(cfg)`:
1. preflight (`checks` + the shared `plan_stage` for the dcd split, the student init and lengths):
   EchoError before any actor starts. The student starts from the teacher unless
   `train.dcd.init_from` names another checkpoint with the same vocabulary;
2. the dcd split is cut into held-out prompts, fresh prompts for each round and spares (`tasks`);
3. `num_teachers` actors (`pool`) decode the held-out prompts, then stream the rounds' trajectories
   through the feeder thread (`feeder`) into one bounded queue per train worker, while
4. a `TorchTrainer` runs the shared loop (`echo_ray.train.loop`) with `DcdStage` and this run's
   `DcdRowSource` on `num_workers` workers; `max_steps` is the number of steps the rounds give.
   With `replay_from` the stored trajectories are fed instead and no teacher starts. With
   `epochs` > 1 the stored rounds are then reviewed (`replay.review_results`) as further rounds;
5. the final model is copied to `<output_dir>/final`; trajectories are under
   `<output_dir>/trajectories` (replayable), per-round records in `dcd_rounds.jsonl`, teacher
   metrics in `teacher_metrics.jsonl`, and the run summary in `dcd_summary.json`;
6. keep-best (`train.dcd.keep_best`, `best`): the workers saved the round with the best held-out
   agreement to `<output_dir>/best`; when the last step fell more than `agreement_drop_warn` below it,
   `final` becomes a copy of it and the last-step model is kept in `<output_dir>/last`. The
   summary's "final_from" says which model is final, and its "warnings" lists the rounds whose
   agreement dropped more than `train.dcd.agreement_drop_warn` below the best so far (also logged here).

A teacher actor that dies is restarted by Ray and its in-flight prompts are redone (`pool`). A train
worker that dies restarts the worker group from the last checkpoint (`train.distributed.max_failures`)
and every worker replays, in order, the packets taken after it from the feeder's packet log and the
trajectory store (`worker`, `stream`). Without stored trajectories (s3:// output, or
`write_trajectories: false`) there is nothing to replay and `max_failures` is forced to 0.

Usage:
    outcome = run_dcd(load_config("configs/tiny.yaml", {"train.dcd_teacher.teacher": "runs/rad/final"}))
    outcome.train.final_dir, outcome.summary["trainer_idle_fraction"], outcome.summary["rounds"]
    outcome.summary["final_from"], outcome.summary["best_round"], outcome.summary["warnings"]
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path


from echo_ray.config import EchoConfig, save_config
from echo_ray.errors import ConfigError
from echo_ray.storage import is_s3, join, read_text, write_text
from echo_ray.train.dcd.best import promote_best, warning_text
from echo_ray.train.dcd.checks import check_dcd_settings, check_teacher, check_vocab, read_meta, writes_trajectories
from echo_ray.train.dcd.feeder import Feeder
from echo_ray.train.dcd.pool import TeacherPool
from echo_ray.train.dcd.replay import replay_heldout, replay_results, review_results
from echo_ray.train.dcd.store import TrajectoryWriter, count_trajectories
from echo_ray.train.dcd.stream import PACKETS_FILE, PacketLog, planned_steps
from echo_ray.train.dcd.tasks import TaskPlan, TaskQueue, load_tasks, plan_tasks
from echo_ray.train.dcd.teacher import TeacherSpec, TeacherWorker
from echo_ray.train.dcd.worker import DcdRowSource
from echo_ray.train.launcher import TrainOutcome, export_final, fault_from_env, run_trainer
from echo_ray.train.preflight import StagePlan, plan_stage, stage_config

log = logging.getLogger(__name__)


@dataclass
class DcdOutcome:
    train: TrainOutcome
    summary: dict  # dcd_summary.json: idle fraction, per-round agreement, teacher metrics, keep-best outcome
    teacher_rounds: list[dict] = field(default_factory=list)
    heldout_failures: list[tuple[str, str]] = field(default_factory=list)
    replaced: list[tuple[int, str, str]] = field(default_factory=list)  # (round, uid, reason)


def prepare(cfg: EchoConfig) -> tuple[EchoConfig, StagePlan]:
    """All driver-side checks; returns the config with the student init resolved, and the plan."""
    t = cfg.train.dcd_teacher
    check_dcd_settings(cfg)
    student_path = cfg.train.dcd.init_from or t.teacher
    if not student_path:
        raise ConfigError("replaying trajectories needs train.dcd.init_from (or train.dcd_teacher.teacher) for the student")
    student = read_meta(student_path)
    if t.teacher:
        teacher = read_meta(t.teacher)
        check_teacher(teacher, cfg)
        check_vocab(teacher, student)
        if t.on_policy_student:
            check_vocab(teacher, read_meta(t.on_policy_student))
    else:
        check_teacher(student, cfg)  # replay: the student must still be a block-diffusion checkpoint
    cfg = replace(cfg, train=replace(cfg.train, dcd=replace(cfg.train.dcd, init_from=student_path)))
    plan = plan_stage(cfg, "dcd", fault_from_env(stage_config(cfg, "dcd").output_dir))
    W, s = cfg.train.distributed.num_workers, plan.job.cfg
    packets = t.rounds * t.epochs * planned_steps(t.prompts_per_round, W, s.batch_size)
    if packets % s.grad_accum:
        raise ConfigError(f"the rounds give {packets} micro-batches per worker, not a multiple of "
                          f"train.dcd.grad_accum={s.grad_accum}")  # fmt: skip
    replayable = writes_trajectories(t, plan.output_dir)
    dist = plan.job.dist if replayable else replace(plan.job.dist, max_failures=0)
    job = replace(plan.job, cfg=replace(s, max_steps=packets // s.grad_accum), dist=dist)
    return cfg, replace(plan, job=job)


def _queues(cfg: EchoConfig, W: int, batch_size: int) -> list:
    from ray.util.queue import Queue

    per_worker = max(1, math.ceil(cfg.train.dcd_teacher.queue_size / (W * batch_size)))  # packets of ~batch_size rows
    return [Queue(maxsize=per_worker, actor_options={"num_cpus": 0}) for _ in range(W)]


def teacher_spec(cfg: EchoConfig) -> TeacherSpec:
    """What every teacher actor loads and decodes with, from the run's config."""
    t = cfg.train.dcd_teacher
    return TeacherSpec(t.teacher, t.teacher_steps, t.top_k, t.max_new_tokens, model=cfg.model, prompt=cfg.prompt,
                       threads=max(1, math.ceil(t.teacher_cpus)), batch_size=t.teacher_batch_size,
                       student=t.on_policy_student)  # fmt: skip


def _teacher_pool(cfg: EchoConfig, worker_cls: type) -> TeacherPool:
    t = cfg.train.dcd_teacher
    return TeacherPool(worker_cls, (teacher_spec(cfg),), t.num_teachers, num_cpus=t.teacher_cpus, num_gpus=t.teacher_gpus)


def _plan_prompts(cfg: EchoConfig, plan: StagePlan) -> TaskPlan | None:
    """The rounds' prompts (None when replaying, after checking the store holds enough records)."""
    t, s = cfg.train.dcd_teacher, plan.job.cfg
    need = t.rounds * t.prompts_per_round
    if t.replay_from:
        have = count_trajectories(t.replay_from)
        if have < need:
            raise ConfigError(f"{t.replay_from} holds {have} trajectories; rounds x prompts_per_round = {need}")
        return None
    tasks = plan_tasks(load_tasks(plan.data_files), t.heldout_prompts, t.rounds, t.prompts_per_round, s.seed)
    log.info("DCD prompts from split '%s' of %s: %d held out, %d rounds x %d, %d spares", s.split, s.data,
             len(tasks.heldout), t.rounds, t.prompts_per_round, len(tasks.spares))  # fmt: skip
    if s.split == "train":
        log.warning("train.dcd.split is 'train' (the split earlier stages train on); the DCD subset is 'dcd'")
    return tasks


def _warm_pool(cfg: EchoConfig, worker_cls: type) -> TeacherPool:
    """The teacher pool with every actor's model loaded before anything waits on it. The held-out decode
    that follows builds the engines' buffers, and the feeder starts before the trainer workers, so the
    trainer's first wait is on warm teachers (its idle time is the steady state's)."""
    t0 = time.perf_counter()
    pool = _teacher_pool(cfg, worker_cls)
    pool.ready()
    log.info("DCD teacher pool ready: %d actor(s) in %.1f s", pool.num_actors, time.perf_counter() - t0)
    return pool


def _heldout(pool: TeacherPool, tasks: list, batch_size: int, writer: TrajectoryWriter | None):
    batches = [(-1, tasks[i : i + batch_size]) for i in range(0, len(tasks), batch_size)]
    records, failures = [], []
    for res in pool.map(batches):
        records.extend(res.records)
        failures.extend(res.failures)
    if writer is not None and records:
        TrajectoryWriter(join(str(writer.root), "heldout")).write(records, 0)
    return records, failures


def _packet_log(writer: TrajectoryWriter | None) -> PacketLog | None:
    """This run's packet log beside the stored trajectories (a previous run's log is dropped)."""
    if writer is None:
        return None
    path = Path(writer.root) / PACKETS_FILE
    path.unlink(missing_ok=True)
    return PacketLog(path)


def _fit(plan: StagePlan, rows: DcdRowSource, feeder: Feeder) -> TrainOutcome:
    """The shared launcher's trainer run (bad input in a worker re-raised as such) beside the feeder."""
    from ray.train import TrainingFailedError

    feeder.start()
    try:
        result = run_trainer(plan, None, rows)
    except TrainingFailedError as e:
        if feeder.error is not None:
            raise feeder.error from e
        raise
    finally:
        feeder.stop()
    feeder.join(timeout=60)
    return export_final(plan, result)


def finish_summary(path: str, out: str) -> dict:
    """The workers' summary, with the final model chosen (`best.promote_best`) and the warnings logged;
    written back to `path`."""
    summary = json.loads(read_text(path))
    if summary.get("keep_best_unavailable"):
        log.warning("DCD: %s; keep_best cannot work, final is the last step", summary["keep_best_unavailable"])
    for w in summary.get("warnings", []):
        log.warning("DCD agreement drop: %s", warning_text(w))
    summary = promote_best(summary, out)
    write_text(path, json.dumps(summary, indent=2))
    return summary


def run_dcd(cfg: EchoConfig, worker_cls: type = TeacherWorker) -> DcdOutcome:
    """Check, collect + train in rounds, export. `worker_cls`: the teacher actor body."""
    import ray

    cfg, plan = prepare(cfg)
    t, W, bs = cfg.train.dcd_teacher, cfg.train.distributed.num_workers, plan.job.cfg.batch_size
    out = plan.output_dir
    save_config(cfg, out)
    tasks = _plan_prompts(cfg, plan)
    if not ray.is_initialized():
        ray.init()
    writer = TrajectoryWriter(join(out, "trajectories")) if writes_trajectories(t, out) else None
    if t.write_trajectories and is_s3(out):
        log.warning("trajectories are stored only under a local train.dcd.output_dir; %s is s3://, none written", out)
    expected = {r: t.prompts_per_round for r in range(t.rounds * t.epochs)}
    pool, queue, queues, heldout_failures = None, None, [], []
    try:
        if t.replay_from:
            heldout = replay_heldout(t.replay_from)
            results = replay_results(t.replay_from, t.rounds, t.prompts_per_round, t.teacher_batch_size)
        else:
            pool = _warm_pool(cfg, worker_cls)
            heldout, heldout_failures = _heldout(pool, tasks.heldout, t.teacher_batch_size, writer)
            queue = TaskQueue(tasks, t.teacher_batch_size)
            results = pool.map(queue)
        if t.epochs > 1:
            store = t.replay_from or str(writer.root)
            results = itertools.chain(results, review_results(store, t.rounds, t.prompts_per_round, t.teacher_batch_size,
                                                              t.epochs, plan.job.cfg.seed))  # fmt: skip
        queues = _queues(cfg, W, bs)
        feeder = Feeder(results, expected, queues, bs, writer, log_path=None if is_s3(out) else join(out, "teacher_metrics.jsonl"),
                        on_failures=queue.replace if queue is not None else None, packet_log=_packet_log(writer))  # fmt: skip
        source = DcdRowSource(queues, heldout, t.max_new_tokens, out,
                              trajectories=str(writer.root) if writer is not None else "")  # fmt: skip
        outcome = _fit(plan, source, feeder)
    finally:
        if pool is not None:
            pool.shutdown()
        for q in queues:
            q.shutdown()
    summary = finish_summary(join(out, "dcd_summary.json"), out)
    return DcdOutcome(outcome, summary, feeder.summaries, heldout_failures, queue.replaced if queue else [])

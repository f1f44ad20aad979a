"""A short DCD run on local Ray: 1 teacher actor streams to 2 Ray Train workers through bounded queues.

The teacher is the session's random tiny checkpoint with its final norm scaled up (logits x30): a
random model's near-uniform distributions make argmax agreement pure noise, while a confident one
gives the student a real one-step-vs-multi-step gap to close, as a trained ECHO_Base does (training
one here would take minutes; benchmarks/dcd.py does that)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from echo_ray.config import load_config
from echo_ray.data.phantom_dataset import write_phantom_dataset
from echo_ray.model.checkpoint import load_checkpoint, save_checkpoint
from echo_ray.train.dcd.agreement import onestep_agreement
from echo_ray.train.dcd.driver import run_dcd
from echo_ray.train.dcd.store import read_trajectories
from echo_ray.train.examples import read_prompt
from echo_ray.train.launcher import FAULT_ENV

ROUNDS, PER_ROUND, HELDOUT = 2, 4, 3


@pytest.fixture(scope="module")
def confident_teacher(tiny_ckpt_dir, tmp_path_factory) -> Path:
    c = load_checkpoint(str(tiny_ckpt_dir))
    with torch.no_grad():
        c.model.model.language_model.norm.weight.mul_(30.0)
    return save_checkpoint(c.model, c.tokenizer, c.image_processor, tmp_path_factory.mktemp("teacher"))


def test_short_dcd_run_streams_and_raises_agreement(ray_cluster, confident_teacher, phantom_dir, tmp_path) -> None:
    data = write_phantom_dataset(phantom_dir, tmp_path / "data", dcd_rows=HELDOUT + ROUNDS * PER_ROUND)
    out = tmp_path / "dcd"
    cfg = load_config(None, {
        "train.dcd_teacher.teacher": str(confident_teacher), "train.dcd_teacher.num_teachers": 1,
        "train.dcd_teacher.rounds": ROUNDS, "train.dcd_teacher.prompts_per_round": PER_ROUND,
        "train.dcd_teacher.heldout_prompts": HELDOUT, "train.dcd_teacher.top_k": 16, "train.dcd_teacher.teacher_steps": 4,
        "train.dcd_teacher.max_new_tokens": 24, "train.dcd_teacher.teacher_batch_size": 2,
        "train.dcd_teacher.queue_size": 2,  # one step packet per worker queue: the teacher must wait for the trainer
        "train.dcd_teacher.epochs": 2,  # then one review pass over the stored rounds (rounds 2 and 3)
        "train.dcd.data": str(data), "train.dcd.split": "dcd", "train.dcd.output_dir": str(out),
        "train.dcd.batch_size": 1, "train.dcd.optim.lr": 1e-4, "train.dcd.optim.warmup_steps": 0,
        "train.dcd.ema_decay": 0.5,  # the recipe's 0.99 would leave 8 steps' average next to the teacher
        "train.dcd.image_gap_batches": 4,  # every row a rank trains on: some share an image layout to swap
        "train.distributed.num_workers": 2, "train.distributed.backend": "ddp",
    })  # fmt: skip
    outcome = run_dcd(cfg)
    summary = outcome.summary

    # finished: 2 steps per round (4 rows over 2 workers, batch 1), 2 live + 2 review rounds, final model
    # exported and loadable
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 9)) and summary["steps"] == 8 and summary["untrained_rows"] == 0
    assert load_checkpoint(outcome.train.final_dir).block_size == 8
    # the image-conditioning gap of the DCD loss is measured at the last step (echo_ray.train.image_gap)
    gaps = json.loads((out / "image_gap.json").read_text())
    assert [g["step"] for g in gaps] == [8] and "image_gap" in outcome.train.metrics

    # every live round's prompts are fresh, stored once (the review pass reads them, never rewrites), never
    # held-out; the review rounds train on exactly the live rounds' studies again
    trained = list(read_trajectories(out / "trajectories"))
    held = list(read_trajectories(out / "trajectories" / "heldout"))
    assert len(trained) == ROUNDS * PER_ROUND and len({r.uid for r in trained}) == len(trained)
    assert len(held) == HELDOUT and not {r.uid for r in held} & {r.uid for r in trained}
    assert [r.round for r in trained] == [0] * PER_ROUND + [1] * PER_ROUND
    sent = [json.loads(x) for x in (out / "trajectories" / "packets.jsonl").read_text().splitlines()]
    uids = [sorted(u for e in sent if e["kind"] == "step" and e["round"] == r for w in e["uids"] for u in w)
            for r in range(2 * ROUNDS)]  # fmt: skip
    assert uids[2] == uids[0] and uids[3] == uids[1] and uids[0] != uids[1]

    # streaming: the trainer's first step came before the teacher's last trajectory, and the bounded
    # queues held the teacher back at least once
    assert summary["first_step_at"] < max(r.produced_at for r in trained)
    teacher = [json.loads(line) for line in (out / "teacher_metrics.jsonl").read_text().splitlines()]
    assert [t["records"] for t in teacher] == [PER_ROUND] * 2 * ROUNDS
    assert max(t["queue_depth_max"] for t in teacher) <= 1.0 and sum(t["feeder_blocked_s"] for t in teacher) > 0
    assert 0.0 <= summary["trainer_idle_fraction"] < 1.0

    # one-step agreement with the teacher on held-out prompts: measured before and after each round, raised
    # by the first round (later steps of this x30-sharpened teacher are unstable at any useful lr: the
    # point here is the mechanics; benchmarks/dcd.py measures learning on a trained teacher)
    rounds = {r["round"]: r for r in summary["rounds"]}
    assert sorted(rounds) == [-1, 0, 1, 2, 3]
    assert rounds[0]["agreement"] > rounds[-1]["agreement"]
    assert rounds[0]["teacher_records"] == PER_ROUND

    # keep-best (on by default): the best round (the untrained student is a candidate) was saved to best/;
    # final is it when the last step fell more than agreement_drop_warn (0.05) below it, and the last-step
    # model is then kept in last/
    scores = {r: rec["agreement"] for r, rec in rounds.items()}
    assert summary["best_agreement"] == max(scores.values()) and scores[summary["best_round"]] == max(scores.values())
    assert summary["final_agreement"] == scores[3] and summary["best_dir"] == str(out / "best")
    assert load_checkpoint(str(out / "best")).block_size == 8
    beaten = summary["best_agreement"] - summary["final_agreement"] > 0.05 + 1e-9
    assert summary["final_from"] == (f"best round {summary['best_round']}" if beaten else "last step")
    assert (out / "last").is_dir() == beaten
    assert all(w["agreement"] < w["best"] - 0.05 for w in summary["warnings"])

    # the weights scored are the weights exported (the moving average, train.dcd.ema_decay): the final
    # checkpoint, decoded here, agrees with the teacher exactly as the run said it would
    final = load_checkpoint(outcome.train.final_dir)
    prompts = [read_prompt([im["path"] for im in r.task.images], r.task.language, final.tokenizer, final.image_processor,
                           cfg.prompt) for r in held]  # fmt: skip
    again = onestep_agreement(final.model, prompts, [r.tokens.tolist() for r in held], final.mask_id, final.eos_id,
                              final.pad_id, 8, 24)  # fmt: skip
    said = summary["final_agreement"] if summary["final_from"] == "last step" else summary["best_agreement"]
    assert again["agreement"] == pytest.approx(said)


def test_dead_train_worker_resumes_and_replays_the_stream_in_order(ray_cluster, confident_teacher, phantom_dir,
                                                                    tmp_path, monkeypatch) -> None:  # fmt: skip
    """Rank 1 exits at the start of step 4, after both ranks took step 3's packet from their queues.
    The group restarts from the last registered checkpoint (step 2, or none if it was not collected
    yet) and each rank replays the packets it had taken after it, from the packet log and the
    trajectory store, before its queue: every step trains exactly the rows the feeder sent for it."""
    data = write_phantom_dataset(phantom_dir, tmp_path / "data", dcd_rows=HELDOUT + ROUNDS * PER_ROUND)
    out = tmp_path / "dcd"
    monkeypatch.setenv(FAULT_ENV, "1:4")
    cfg = load_config(None, {
        "train.dcd_teacher.teacher": str(confident_teacher), "train.dcd_teacher.num_teachers": 1,
        "train.dcd_teacher.rounds": ROUNDS, "train.dcd_teacher.prompts_per_round": PER_ROUND,
        "train.dcd_teacher.heldout_prompts": HELDOUT, "train.dcd_teacher.top_k": 16, "train.dcd_teacher.teacher_steps": 4,
        "train.dcd_teacher.max_new_tokens": 24, "train.dcd_teacher.teacher_batch_size": 2,
        "train.dcd.data": str(data), "train.dcd.split": "dcd", "train.dcd.output_dir": str(out),
        "train.dcd.batch_size": 1, "train.dcd.checkpoint_every": 2, "train.dcd.optim.warmup_steps": 0,
        "train.dcd_teacher.epochs": 1, "train.dcd_teacher.queue_size": 32,
        "train.distributed.num_workers": 2, "train.distributed.backend": "ddp", "train.distributed.max_failures": 1,
    })  # fmt: skip
    summary = run_dcd(cfg).summary
    assert (out / ".fault_injected").is_file()
    assert summary["steps"] == 4 and summary["untrained_rows"] == 0
    assert summary["replayed_packets"] >= 2  # step 3's packet on both ranks, at least

    trained = list(read_trajectories(out / "trajectories"))
    assert len(trained) == ROUNDS * PER_ROUND and len({r.uid for r in trained}) == len(trained)  # teacher not rerun
    study_of = {r.uid: r.task.study_id for r in trained}
    sent = {e["step"]: e for e in map(json.loads, (out / "trajectories" / "packets.jsonl").read_text().splitlines())
            if e["kind"] == "step"}  # fmt: skip
    assert sorted(sent) == [1, 2, 3, 4]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines[:3]] == [1, 2, 3]  # then the restart: from step 2, or from the start
    assert [m["step"] for m in lines[3:]] in ([3, 4], [1, 2, 3, 4])
    for m in lines:  # rank 0's rows at every step, before and after the restart, are the ones sent for that step
        assert m["study_ids"] == [study_of[u] for u in sent[m["step"]]["uids"][0]], m["step"]


def test_on_policy_pass_trains_on_the_students_reports(ray_cluster, confident_teacher, phantom_dir, tmp_path) -> None:
    """The teacher actor loads the student, labels its one-step reports; held-out stays the teacher's own."""
    data = write_phantom_dataset(phantom_dir, tmp_path / "data", dcd_rows=HELDOUT + PER_ROUND)
    out = tmp_path / "dcd_on"
    cfg = load_config(None, {
        "train.dcd_teacher.teacher": str(confident_teacher), "train.dcd_teacher.on_policy_student": str(confident_teacher),
        "train.dcd_teacher.rounds": 1, "train.dcd_teacher.prompts_per_round": PER_ROUND, "train.dcd_teacher.epochs": 1,
        "train.dcd_teacher.heldout_prompts": HELDOUT, "train.dcd_teacher.top_k": 16, "train.dcd_teacher.teacher_steps": 4,
        "train.dcd_teacher.max_new_tokens": 24, "train.dcd_teacher.teacher_batch_size": 2,
        "train.dcd.init_from": str(confident_teacher), "train.dcd.data": str(data), "train.dcd.split": "dcd",
        "train.dcd.output_dir": str(out), "train.dcd.batch_size": 1, "train.dcd.optim.lr": 1e-4,
        "train.dcd.image_gap_every": 0, "train.distributed.num_workers": 2, "train.distributed.backend": "ddp",
    })  # fmt: skip
    outcome = run_dcd(cfg)
    assert outcome.summary["steps"] == 2 and outcome.summary["untrained_rows"] == 0
    trained = list(read_trajectories(out / "trajectories"))
    held = list(read_trajectories(out / "trajectories" / "heldout"))
    assert len(trained) == PER_ROUND and all(r.context is not None and r.context.shape == r.tokens.shape for r in trained)
    assert all(r.context is None for r in held)

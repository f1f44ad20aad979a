"""On-policy DCD records on the tiny model: the teacher's block labels on a given report match its own
multi-step decode when the report is its own, the worker labels the student's one-step reports, the
records round-trip through Parquet (old stores without `context` still read), and the student
trains on the student's report as its clean copy."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from echo_ray.config import DcdLossConfig, PromptConfig, load_config
from echo_ray.data.phantom import read_phantom
from echo_ray.errors import ConfigError
from echo_ray.train.dcd.checks import check_dcd_settings
from echo_ray.train.dcd.on_policy import label_blocks, report_context
from echo_ray.train.dcd.stage import DcdStage, student_response
from echo_ray.train.dcd.store import SCHEMA, TrajectoryWriter, read_trajectories, to_table
from echo_ray.train.dcd.teacher import TeacherSpec, TeacherWorker
from echo_ray.train.dcd.trajectory import PromptTask
from echo_ray.train.examples import Limits
from echo_ray.train.stage import ModelParts

S, K, B, MAX_NEW = 4, 16, 8, 24


@pytest.fixture(scope="module")
def tasks(phantom_dir):
    recs = read_phantom(phantom_dir)[:3]
    out = [PromptTask(f"t{i}", r["study_id"], "en", r["images"], r["report"]) for i, r in enumerate(recs)]
    out[1].images = out[1].images + out[0].images[:1]  # a longer prompt: different tails in one batch
    return out


@pytest.fixture(scope="module")
def worker(tiny_ckpt_dir):
    # the random tiny model is its own "student" here: what matters is whose report is labelled
    spec = TeacherSpec(str(tiny_ckpt_dir), steps=S, top_k=K, max_new_tokens=MAX_NEW, student=str(tiny_ckpt_dir))
    return TeacherWorker(spec)


def test_labels_on_own_report_match_the_teachers_decode(worker, tasks) -> None:
    own = worker.decode(tasks, round_index=-1).records  # held-out round: the teacher's own decodes
    assert all(r.context is None for r in own)
    c = worker.ckpt
    prompts = [worker._prompt(t) for t in tasks]
    contexts = [student_response(r, c.eos_id) for r in own]
    labels = label_blocks(c.model, prompts, contexts, B, S, K, c.mask_id, c.pad_id)
    for rec, lab in zip(own, labels):
        # the whole block-by-block decode, redone as one pass over every block of the RAD layout
        n = rec.eos_pos + 1 if rec.eos_pos >= 0 else rec.response_len
        np.testing.assert_array_equal(lab["tokens"][:n].numpy(), rec.tokens[:n])
        np.testing.assert_array_equal(lab["commit_step"][:n].numpy(), rec.commit_step[:n])
        np.testing.assert_array_equal(lab["topk_ids"][:n].numpy(), rec.topk_ids[:n])
        mass = torch.logsumexp(lab["topk_logprobs"][:n], -1)
        np.testing.assert_allclose(mass.numpy(), rec.topk_logmass[:n], atol=1e-4)


def test_worker_labels_the_students_one_step_reports(worker, tasks) -> None:
    res = worker.decode(tasks, round_index=2)
    assert [r.uid for r in res.records] == [t.uid for t in tasks] and not res.failures
    c = worker.ckpt
    prompts = [worker._prompt(t) for t in tasks]
    from echo_ray.train.dcd.on_policy import student_reports

    reports = student_reports(worker._engine_for(prompts, worker.student, "student"), prompts, B, MAX_NEW)
    for rec, p, (toks, _) in zip(res.records, prompts, reports):
        assert rec.round == 2 and rec.context is not None
        np.testing.assert_array_equal(rec.context, report_context(toks, p.length, B, c.eos_id).numpy())
        assert rec.context.shape == rec.tokens.shape and (p.length + rec.response_len) % B == 0
        assert ((1 <= rec.commit_step) & (rec.commit_step <= S)).all()
        np.testing.assert_allclose(np.exp(rec.topk_logprobs).sum(-1), 1.0, atol=1e-5)
        assert (rec.topk_ids[:, 0] == rec.tokens).all(), "the committed token is the teacher's argmax"


def test_store_round_trip_and_old_stores(worker, tasks, tmp_path) -> None:
    recs = worker.decode(tasks, round_index=0).records
    TrajectoryWriter(tmp_path / "new").write(recs, 0)
    back = list(read_trajectories(tmp_path / "new"))
    for a, b in zip(recs, back):
        np.testing.assert_array_equal(a.context, b.context)
    old = worker.decode(tasks, round_index=-1).records
    table = to_table(old).drop_columns(["context"])  # a store written before `context` existed
    (tmp_path / "old" / "round-0000").mkdir(parents=True)
    pq.write_table(table, tmp_path / "old" / "round-0000" / "part-00000.parquet")
    assert "context" in SCHEMA.names
    assert all(r.context is None for r in read_trajectories(tmp_path / "old"))


def test_student_trains_on_its_own_report(worker, tasks) -> None:
    rec = worker.decode(tasks[:1], round_index=0).records[0]
    rec.context = rec.context.copy()
    rec.context[: -B] = (rec.context[: -B] + 1) % 50 + 10  # make it differ from the teacher's labels
    c = worker.ckpt
    parts = ModelParts(c.model, c.tokenizer, c.image_processor, c.mask_id, B, PromptConfig())
    batch = DcdStage(Limits(2048, 256), DcdLossConfig()).build_batch([rec], parts, torch.Generator())
    P = rec.prompt_ids.shape[0]
    clean = batch["input_ids"][0][P : P + rec.response_len]
    np.testing.assert_array_equal(clean.numpy(), rec.context)
    cand = batch["masked"][0]
    assert (batch["topk_ids"][0][cand][:, 0].numpy() == rec.topk_ids[:, 0]).all(), "targets stay the teacher's"


def test_on_policy_needs_live_teachers() -> None:
    cfg = load_config(None, {"train.dcd_teacher.on_policy_student": "runs/dcd/final",
                             "train.dcd_teacher.replay_from": "runs/dcd/trajectories"})  # fmt: skip
    with pytest.raises(ConfigError, match="on_policy_student"):
        check_dcd_settings(cfg)

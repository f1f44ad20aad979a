"""Teacher pool fault handling (Ray restarts a dying actor and re-runs its in-flight calls, so every
prompt is redone exactly once), task planning and spares, replay, and the DCD preflight errors
raised before any actor starts."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from echo_ray.config import load_config
from echo_ray.data.phantom import read_phantom
from echo_ray.errors import ConfigError, EchoError, InputError
from echo_ray.train.dcd.driver import prepare
from echo_ray.train.dcd.pool import TeacherPool
from echo_ray.train.dcd.replay import replay_results, review_results
from echo_ray.train.dcd.store import TrajectoryWriter
from echo_ray.train.dcd.tasks import TaskQueue, plan_tasks
from echo_ray.train.dcd.teacher import TeacherSpec, TeacherWorker
from echo_ray.train.dcd.trajectory import PromptTask


def dies_once(marker: str) -> type:
    """A real teacher whose process exits (no cleanup, like a lost node) on its first call when the
    marker file is absent; the replacement actor finds the marker and works. Defined in a closure so
    Ray ships the class by value to the actor processes."""

    class DiesOnce(TeacherWorker):
        def decode(self, tasks, round_index=0):
            if not os.path.exists(marker):
                Path(marker).write_text("died\n", encoding="utf-8")
                os._exit(1)
            return super().decode(tasks, round_index)

    return DiesOnce


@pytest.fixture(scope="module")
def tasks(phantom_dir) -> list[PromptTask]:
    return [PromptTask(f"u{i}", r["study_id"], "en", r["images"], r["report"]) for i, r in enumerate(read_phantom(phantom_dir))]


def test_dead_teacher_is_restarted_and_its_prompts_redone(ray_cluster, tiny_ckpt_dir, tasks, tmp_path) -> None:
    spec = TeacherSpec(str(tiny_ckpt_dir), steps=2, top_k=4, max_new_tokens=8)
    pool = TeacherPool(dies_once(str(tmp_path / "marker")), (spec,), num_actors=1, num_cpus=0.5, max_in_flight=2)
    bad = PromptTask("bad", "bad", "en", [{"path": str(tmp_path / "missing.png"), "view": "PA"}])
    batches = [(0, tasks[0:2]), (0, tasks[2:4]), (1, [tasks[4], bad])]
    try:
        results = list(pool.map(iter(batches)))
    finally:
        pool.shutdown()
    assert (tmp_path / "marker").exists() and pool.replacements == 1
    uids = [r.uid for res in results for r in res.records]
    assert sorted(uids) == sorted(t.uid for t in tasks[:5]), "no target lost or duplicated"
    assert {r.uid: r.round for res in results for r in res.records}["u4"] == 1
    failures = [f for res in results for f in res.failures]
    assert len(failures) == 1 and failures[0][0] == "bad" and "image file not found" in failures[0][1]
    assert all(".restart@" in res.teacher for res in results), "every result came from the restarted actor"


def test_task_plan_fresh_prompts_and_spares(tasks) -> None:
    plan = plan_tasks(tasks, heldout=2, rounds=2, per_round=3, seed=0)
    used = [t.uid for t in plan.heldout] + [t.uid for r in plan.rounds for t in r]
    assert len(used) == len(set(used)) == 8 and len(plan.spares) == len(tasks) - 8
    q = TaskQueue(plan, batch_size=2)
    first = next(q)
    assert first[0] == 0 and len(first[1]) == 2
    q.replace(1, [("x", "unreadable image"), ("y", "unreadable image")])
    assert next(q)[0] == 1 and len(q.replaced) == 2
    rest = list(q)
    assert sum(len(b) for _, b in rest) == 4 and not list(q)  # 6 planned - 2 taken; the spares came first
    with pytest.raises(EchoError, match="spare rows"):
        q.replace(0, [("z", "bad")] * (len(plan.spares) + 1))
    with pytest.raises(ConfigError, match="distinct prompts"):
        plan_tasks(tasks, heldout=4, rounds=3, per_round=4, seed=0)


def test_replay_assigns_rounds_in_order(tmp_path, tiny_ckpt_dir, tasks) -> None:
    worker = TeacherWorker(TeacherSpec(str(tiny_ckpt_dir), steps=2, top_k=4, max_new_tokens=8))
    recs = worker.decode(tasks[:5], round_index=0).records
    w = TrajectoryWriter(tmp_path)
    w.write(recs[:3], 0)
    w.write(recs[3:], 1)
    out = list(replay_results(str(tmp_path), rounds=2, per_round=2, batch_size=3))
    assert [(res.round_index, [r.uid for r in res.records]) for res in out] == [
        (0, ["u0", "u1"]),
        (1, ["u2", "u3"]),
    ]


def test_review_passes_reshuffle_each_stored_round_without_rewriting_it(tmp_path, tiny_ckpt_dir, tasks) -> None:
    """epochs=3 over 2 stored rounds of 3: rounds 2..5, each the same uids as round r % 2, shuffled
    per epoch (seeded: the same on a rerun), marked stored so the feeder does not write them again."""
    worker = TeacherWorker(TeacherSpec(str(tiny_ckpt_dir), steps=2, top_k=4, max_new_tokens=8))
    recs = worker.decode(tasks[:6], round_index=0).records
    w = TrajectoryWriter(tmp_path)
    w.write(recs[:3], 0)
    w.write(recs[3:], 1)
    out = list(review_results(str(tmp_path), rounds=2, per_round=3, batch_size=2, epochs=3, seed=0))
    by_round: dict[int, list[str]] = {}
    for res in out:
        assert res.stored and res.teacher == "review" and len(res.records) <= 2
        assert all(rec.round == res.round_index for rec in res.records)
        by_round.setdefault(res.round_index, []).extend(rec.uid for rec in res.records)
    assert sorted(by_round) == [2, 3, 4, 5]
    for r, uids in by_round.items():
        assert sorted(uids) == [f"u{i}" for i in range(3 * (r % 2), 3 * (r % 2) + 3)]
    again = list(review_results(str(tmp_path), rounds=2, per_round=3, batch_size=2, epochs=3, seed=0))
    assert [[x.uid for x in res.records] for res in again] == [[x.uid for x in res.records] for res in out]
    assert list(review_results(str(tmp_path), rounds=2, per_round=3, batch_size=2, epochs=1, seed=0)) == []


def _copy_ckpt(src: Path, dst: Path, **config_changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for k, v in config_changes.items():
        if v is None:
            cfg.pop(k, None)
        elif k == "vocab_size":
            cfg.setdefault("text_config", {})["vocab_size"] = v
            cfg["vocab_size"] = v
        else:
            cfg[k] = v
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def test_bad_teacher_or_vocab_fails_before_actors(tiny_ckpt_dir, tmp_path) -> None:
    base = {"train.dcd.data": str(tmp_path / "nodata"), "train.dcd.output_dir": str(tmp_path / "out")}

    def cfg(**over):
        return load_config(None, {**base, **over})

    from published_support import strip_mask

    no_mask = strip_mask(tiny_ckpt_dir, tmp_path / "no_mask")  # no MASK id in any layout
    no_block = _copy_ckpt(tiny_ckpt_dir, tmp_path / "no_block", echo_block_size=None)
    other_vocab = _copy_ckpt(tiny_ckpt_dir, tmp_path / "vocab", vocab_size=5000)
    with pytest.raises(InputError, match="no MASK token id"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(no_mask)}))
    with pytest.raises(InputError, match="records no block size"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(no_block)}))
    with pytest.raises(InputError, match="do not share a vocabulary: vocabulary size"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd.init_from": str(other_vocab)}))
    with pytest.raises(ConfigError, match="block size 8 but model.block_size=4"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "model.block_size": 4}))
    with pytest.raises(ConfigError, match="teacher is not set"):
        prepare(cfg())
    with pytest.raises(ConfigError, match="top_k"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd_teacher.top_k": 10**6}))
    with pytest.raises(ConfigError, match="exceeds train.dcd.max_response_tokens"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd_teacher.max_new_tokens": 300}))
    with pytest.raises(ConfigError, match="none are stored"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd_teacher.epochs": 2,
                       "train.dcd_teacher.write_trajectories": False}))  # fmt: skip
    with pytest.raises(ConfigError, match="'train.dcd_teacher.epochs': input should be greater than 0"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd_teacher.epochs": 0}))
    with pytest.raises(ConfigError, match="gives some of the 2 workers no rows"):
        prepare(cfg(**{"train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd_teacher.prompts_per_round": 1}))


def test_teacher_loads_with_the_students_model_settings(tiny_ckpt_dir, phantom_dir, tasks, tmp_path) -> None:
    """model.min_pixels above the phantom images' size makes the image processor upsize them: the
    teacher actors must load the model exactly as the student's stage does (one ModelConfig), or the
    student's prompt is not the one the teacher decoded and DCD stops (issue 28)."""
    import torch

    from echo_ray.data.phantom_dataset import write_phantom_dataset
    from echo_ray.train.dcd.driver import teacher_spec
    from echo_ray.train.job import build_stage
    from echo_ray.train.loop import load_parts

    data = write_phantom_dataset(phantom_dir, tmp_path / "data", dcd_rows=4)
    cfg = load_config(None, {
        "train.dcd_teacher.teacher": str(tiny_ckpt_dir), "train.dcd_teacher.rounds": 1,
        "train.dcd_teacher.prompts_per_round": 2, "train.dcd_teacher.heldout_prompts": 1,
        "train.dcd_teacher.top_k": 4, "train.dcd_teacher.teacher_steps": 2, "train.dcd_teacher.max_new_tokens": 8,
        "train.dcd.data": str(data), "train.dcd.split": "dcd", "train.dcd.output_dir": str(tmp_path / "out"),
        "train.dcd.batch_size": 1, "train.distributed.num_workers": 1,
        "model.max_pixels": 200704, "model.min_pixels": 50176,  # 224^2 > the phantom images' area
    })  # fmt: skip
    cfg, plan = prepare(cfg)
    rec = TeacherWorker(teacher_spec(cfg)).decode(tasks[:1]).records[0]
    parts = load_parts(plan.job, torch.device("cpu"))
    stage = build_stage(plan.job)
    batch = stage.build_batch([rec], parts, torch.Generator().manual_seed(0))  # checks the prompt ids
    grid = batch["image_grid_thw"]
    assert int(grid.prod(-1).min()) * 14 * 14 >= 50176, "the images were upsized to model.min_pixels"
    loss, _ = stage.loss(parts.model, batch)
    assert torch.isfinite(loss)

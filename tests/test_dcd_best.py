"""Keep-best DCD (echo_ray.train.dcd.best): the best-round bookkeeping, drop warnings, and final <- best on disk.

The bookkeeping is pure and tested on its own; the disk tests save a real tiny checkpoint as the best
round, write a worse "final" the way the launcher's export does (`export_hf`, the checkpoint layout),
and let the driver's `promote_best` swap them, locally and on a local S3 (moto). The end-to-end run
(tests/test_dcd_run.py) checks the summary a real Ray run writes.
"""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest
import torch

from echo_ray.config import PromptConfig, load_config
from echo_ray.errors import ConfigError
from echo_ray.model.checkpoint import load_checkpoint
from echo_ray.storage import exists, join, resolve_local
from echo_ray.train.checkpointing import export_hf
from echo_ray.train.dcd.best import (LAST_STEP, BestKeeping, BestRound, choose_final, promote_best, replace_tree,
                                     save_best, unscored_reason)  # fmt: skip
from echo_ray.train.dcd.cli import outcome_lines
from echo_ray.train.dcd.driver import finish_summary
from echo_ray.train.stage import ModelParts


def test_new_best_is_strictly_greater_and_drops_beyond_the_threshold_warn() -> None:
    best = BestRound(drop_warn=0.05)
    assert best.update(-1, 0.50).new_best  # the student before training is the first candidate
    assert best.update(0, 0.60).new_best
    tie = best.update(1, 0.60)
    assert not tie.new_best and tie.warning is None and best.best_round == 0  # a tie keeps the earlier round
    assert best.update(2, 0.55).warning is None  # exactly drop_warn below: not "more than"
    drop = best.update(3, 0.50)
    assert not drop.new_best and drop.warning == {"round": 3, "agreement": 0.50, "best": 0.60, "best_round": 0,
                                                  "drop": pytest.approx(0.10)}  # fmt: skip
    assert best.update(4, 0.70).new_best and (best.best_round, best.best_agreement) == (4, 0.70)
    assert [w["round"] for w in best.warnings] == [3]


def test_a_run_that_only_gets_worse_keeps_the_untrained_student() -> None:
    best = BestRound(drop_warn=0.05)
    for r, a in [(-1, 0.80), (0, 0.78), (1, 0.70), (2, 0.60)]:
        best.update(r, a)
    assert (best.best_round, best.best_agreement) == (-1, 0.80)
    assert [w["round"] for w in best.warnings] == [1, 2]
    keeping = BestKeeping(True, best, saved_round=-1)
    rounds = [{"round": r, "agreement": a} for r, a in [(-1, 0.80), (0, 0.78), (1, 0.70), (2, 0.60)]]
    summary = keeping.summary(rounds, "runs/dcd")
    assert summary["best_dir"] == "runs/dcd/best" and (summary["final_round"], summary["final_agreement"]) == (2, 0.60)
    assert choose_final(summary) == "best round -1"


def test_choose_final_needs_keep_best_a_saved_best_and_a_tipped_over_run() -> None:
    base = {"keep_best": True, "best_round": 1, "best_agreement": 0.7, "final_agreement": 0.6, "best_dir": "o/best",
            "agreement_drop_warn": 0.05}  # fmt: skip
    assert choose_final(base) == "best round 1"
    # within the warning margin the last step stays: the best of many noisy rounds is partly luck
    assert choose_final({**base, "final_agreement": 0.66}) == LAST_STEP
    assert choose_final({**base, "final_agreement": 0.65}) == LAST_STEP  # exactly the margin is not "more than"
    assert choose_final({**base, "final_agreement": 0.64}) == "best round 1"
    assert choose_final({**base, "keep_best": False}) == LAST_STEP
    assert choose_final({**base, "best_dir": None}) == LAST_STEP  # best/ holds another round (or nothing)
    assert choose_final({**base, "final_agreement": 0.7}) == LAST_STEP  # the last round is the best
    assert choose_final({**base, "best_agreement": None, "final_agreement": None}) == LAST_STEP  # nothing scored
    assert choose_final({}) == LAST_STEP


def test_replayed_rounds_and_resume_rebuild_the_tracker() -> None:
    best = BestRound(drop_warn=0.05)
    best.update(0, 0.8)
    best.update(1, 0.6)
    assert [w["round"] for w in best.warnings] == [1]
    best.update(1, 0.78)  # round 1 replayed after a restart: its warning is replaced, not doubled
    assert best.warnings == []
    with pytest.raises(ValueError, match="round 2: agreement must be a finite number"):
        best.update(2, float("nan"))

    # dead group: best saved at rounds -1 and 1; the new group restarts from a checkpoint in round 1
    rounds = [{"round": -1, "agreement": 0.5, "best_saved": True}, {"round": 0, "agreement": 0.4},
              {"round": 1, "agreement": 0.9, "best_saved": True}, {"round": 2, "steps": 4}]  # fmt: skip
    keeping = BestKeeping(True, BestRound(0.05))
    keeping.resume(rounds, replayed_from=1)
    assert (keeping.tracker.best_round, keeping.saved_round) == (-1, 1)  # round 1 is judged again when replayed
    assert keeping.summary(rounds, "o")["best_dir"] is None  # best/ holds round 1, which the replay has not confirmed
    assert keeping.tracker.update(1, 0.9).new_best


def test_unscored_runs_say_why_keep_best_cannot_work() -> None:
    assert "ZeRO-3" in unscored_reason(False, ["rec"]) and "heldout_prompts" in unscored_reason(True, [])
    assert unscored_reason(True, ["rec"]) is None
    summary = BestKeeping(True, BestRound(), unscored_reason(False, [])).summary([{"round": -1}], "o")
    assert summary["best_round"] is None and summary["final_agreement"] is None and summary["best_dir"] is None
    assert "ZeRO-3" in summary["keep_best_unavailable"] and choose_final(summary) == LAST_STEP


def test_config_fields_are_validated() -> None:
    dcd = load_config(None, {}).train.dcd
    assert dcd.keep_best is True and dcd.agreement_drop_warn == 0.05
    assert load_config(None, {"train.dcd.keep_best": False}).train.dcd.keep_best is False
    with pytest.raises(ConfigError, match="train.dcd.agreement_drop_warn"):
        load_config(None, {"train.dcd.agreement_drop_warn": -0.1})


def _parts(tiny_ckpt_dir: Path) -> ModelParts:
    c = load_checkpoint(str(tiny_ckpt_dir))
    return ModelParts(c.model, c.tokenizer, c.image_processor, c.mask_id, 8, PromptConfig())


def _mark(parts: ModelParts, value: float) -> None:
    with torch.no_grad():
        parts.model.model.language_model.norm.weight.fill_(value)


def _marker(path: str, cache: Path) -> float:
    c = load_checkpoint(path, load_config(None, {"model.cache_dir": str(cache)}).model)
    assert c.block_size == 8 and c.mask_id is not None  # loadable, with the ECHO metadata, like final
    return float(c.model.model.language_model.norm.weight[0].detach())


def _run_on(out: str, parts: ModelParts, tmp_path: Path) -> dict:
    """Round 0 is the best (saved by `save_best`, twice: replacing works), the last step is worse."""
    keeping = BestKeeping(True, BestRound(0.05))
    for r, a, mark in [(-1, 0.5, 1.0), (0, 0.8, 2.0)]:
        _mark(parts, mark)
        assert keeping.tracker.update(r, a).new_best
        save_best(parts, out)
        keeping.saved_round = r
    assert keeping.tracker.update(1, 0.6).warning is not None
    _mark(parts, 3.0)  # the last step: exported the way `export_final` copies a checkpoint's model
    staged = export_hf(parts.model, parts.model.state_dict(), parts, tmp_path / "ckpt" / "model")
    replace_tree(str(staged), join(out, "final"))
    rounds = [{"round": -1, "agreement": 0.5}, {"round": 0, "agreement": 0.8}, {"round": 1, "agreement": 0.6}]
    return {"trainer_idle_fraction": 0.1, "rounds": rounds, **keeping.summary(rounds, out)}


def test_final_becomes_the_best_round_on_disk(tiny_ckpt_dir, tmp_path) -> None:
    out = tmp_path / "dcd"
    summary = _run_on(str(out), _parts(tiny_ckpt_dir), tmp_path)
    (out / "dcd_summary.json").write_text(json.dumps(summary))
    final = finish_summary(str(out / "dcd_summary.json"), str(out))  # the driver's step after export_final
    assert final["final_from"] == "best round 0" and final["last_dir"] == str(out / "last")
    assert json.loads((out / "dcd_summary.json").read_text())["final_from"] == "best round 0"
    cache = tmp_path / "cache"
    assert _marker(str(out / "final"), cache) == 2.0 and _marker(str(out / "best"), cache) == 2.0
    assert _marker(str(out / "last"), cache) == 3.0  # the last-step model is kept
    assert sorted(p.name for p in out.iterdir()) == ["best", "dcd_summary.json", "final", "last"]  # no staging left

    lines = outcome_lines(final, str(out / "final"))  # what `echo-ray train dcd` prints at the end
    assert lines[0].startswith("[dcd] warning: round 1: held-out agreement 0.6000 is 0.2000 below the best so far")
    assert "(from best round 0, agreement 0.8000 vs the last step's 0.6000; last-step model: " in lines[-1]

    # keep_best off: final stays the last step, nothing is moved
    again = promote_best({**summary, "keep_best": False}, str(out))
    assert again["final_from"] == LAST_STEP and "last_dir" not in again


def test_best_and_promotion_on_s3(moto_s3, tiny_ckpt_dir, tmp_path) -> None:
    boto3.client("s3").create_bucket(Bucket="dcd-best")
    out = "s3://dcd-best/runs/dcd"
    summary = _run_on(out, _parts(tiny_ckpt_dir), tmp_path)
    final = promote_best(summary, out)
    assert final["final_from"] == "best round 0" and exists(join(out, "last", "config.json"))
    cache = tmp_path / "cache"
    assert _marker(join(out, "final"), cache) == 2.0 and _marker(join(out, "last"), cache) == 3.0
    assert resolve_local(join(out, "best"), cache).is_dir()

"""Keep the best DCD round: agreement bookkeeping, drop warnings, and the best checkpoint on disk.

DCD can get worse late in a run (a very sharp teacher, a high lr, review passes that overfit), and
the last step is not always the best student. Rank 0 scores the student's one-step agreement with
the teacher on the held-out prompts at every round end (`worker.DcdRounds`); here:

* `BestRound` keeps the best agreement so far. Round -1 (before the first step: the student as
  initialised, i.e. the teacher's own one-step score when the student starts from the teacher) is
  a candidate like any round, so a run that only gets worse ends with the unchanged student. Only
  a strictly greater agreement is a new best (a tie keeps the earlier, less-trained round). A round
  more than `train.dcd.agreement_drop_warn` below the best so far is a warning (logged, and listed
  under "warnings" in `dcd_summary.json`);
* with `train.dcd.keep_best` every new best is saved by rank 0 to `<output_dir>/best` (`save_best`,
  through `checkpointing.export_hf`: the layout of `final`, loadable by `load_checkpoint`);
* after training the driver calls `promote_best`: when the final model's agreement fell more than
  `agreement_drop_warn` below the best round's (`choose_final`; the run tipped over),
  `<output_dir>/final` becomes a copy of `best` and the last-step model
  is kept in `<output_dir>/last`; the summary's "final_from" says which ("last step" or
  "best round N").

Local directories are replaced atomically (written beside, renamed into place); under s3:// the
checkpoint is written to a local temporary directory and uploaded, and the old objects are deleted
first (a crash in between leaves the S3 copy partial; `dcd_rounds.jsonl` marks a saved best only
once its upload finished). With ZeRO-3 (no in-loop agreement) or no held-out prompts, nothing is
scored: keep_best cannot work, and the summary says why ("keep_best_unavailable").

Usage:
    best = BestRound(drop_warn=0.05)
    verdict = best.update(0, 0.71)           # Verdict(new_best=True, warning=None)
    if verdict.new_best: save_best(parts, "runs/dcd")
    summary = promote_best(summary, "runs/dcd")   # driver, after export_final
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from echo_ray.storage import copy_tree, exists, is_s3, join, resolve_fs

log = logging.getLogger(__name__)

BEST_DIR, FINAL_DIR, LAST_DIR = "best", "final", "last"
LAST_STEP = "last step"
_EPS = 1e-9  # agreements are ratios of token counts: a drop of exactly `drop_warn` is not "more than"


@dataclass
class Verdict:
    """What one round's agreement means: a new best (save it), and/or a drop warning."""

    new_best: bool
    warning: dict | None = None


@dataclass
class BestRound:
    """The best held-out agreement so far and the rounds that fell too far below it (pure, no I/O)."""

    drop_warn: float = 0.05
    best_round: int | None = None
    best_agreement: float | None = None
    warnings: list[dict] = field(default_factory=list)

    def update(self, round_index: int, agreement: float) -> Verdict:
        """Record one round's agreement. A round seen again (replayed after a restart) replaces its warning."""
        if not isinstance(agreement, (int, float)) or not math.isfinite(agreement):
            raise ValueError(f"round {round_index}: agreement must be a finite number, got {agreement!r}")
        self.warnings = [w for w in self.warnings if w["round"] != round_index]
        if self.best_agreement is None or agreement > self.best_agreement:
            self.best_round, self.best_agreement = round_index, float(agreement)
            return Verdict(new_best=True)
        if self.best_agreement - agreement > self.drop_warn + _EPS:
            warning = {"round": round_index, "agreement": float(agreement), "best": self.best_agreement,
                       "best_round": self.best_round, "drop": self.best_agreement - agreement}  # fmt: skip
            self.warnings.append(warning)
            return Verdict(new_best=False, warning=warning)
        return Verdict(new_best=False)

    @classmethod
    def from_rounds(cls, rounds: list[dict], drop_warn: float) -> BestRound:
        """Rebuilt from recorded round records (a resumed worker group), in round order."""
        best = cls(drop_warn)
        for rec in sorted(rounds, key=lambda r: r["round"]):
            if rec.get("agreement") is not None:
                best.update(rec["round"], rec["agreement"])
        return best


def unscored_reason(evaluate: bool, heldout: list) -> str | None:
    """Why no round gets a held-out agreement in this run (then keep_best cannot work), or None."""
    if not evaluate:
        return "ZeRO-3 partitions the weights: the in-loop held-out agreement is skipped"
    if not heldout:
        return "no held-out trajectories (train.dcd_teacher.heldout_prompts is 0, or every held-out decode failed)"
    return None


@dataclass
class BestKeeping:
    """Rank 0's keep-best state: the setting, the tracker, and which round's model `<output_dir>/best` holds."""

    keep: bool
    tracker: BestRound
    unscored: str | None = None  # why nothing is scored (keep_best cannot work), or None
    saved_round: int | None = None

    def resume(self, rounds: list[dict], replayed_from: int) -> None:
        """After a restart from a checkpoint taken in round `replayed_from`: the tracker is rebuilt from
        the rounds before it (the later round ends are replayed and judged again, by the model trained
        on the same rows); `saved_round` is the last best written by the dead group (a record marks
        `best_saved` only after the save finished), so a best it saved that the replay does not confirm
        is never promoted (`summary` gives no best_dir)."""
        self.tracker = BestRound.from_rounds([r for r in rounds if r["round"] < replayed_from], self.tracker.drop_warn)
        saved = [r["round"] for r in rounds if r.get("best_saved")]
        self.saved_round = max(saved) if saved else None

    def summary(self, rounds: list[dict], output_dir: str) -> dict:
        """The keep-best part of dcd_summary.json; the driver adds "final_from" (`best.promote_best`)."""
        t, scored = self.tracker, [r for r in rounds if r.get("agreement") is not None]
        last = max(scored, key=lambda r: r["round"]) if scored else None
        holds_best = self.keep and self.saved_round is not None and self.saved_round == t.best_round
        out = {"keep_best": self.keep, "best_round": t.best_round, "best_agreement": t.best_agreement,
               "final_round": last["round"] if last else None, "final_agreement": last["agreement"] if last else None,
               "best_dir": join(output_dir, BEST_DIR) if holds_best else None, "warnings": list(t.warnings),
               "agreement_drop_warn": t.drop_warn}  # fmt: skip
        if self.unscored:
            out["keep_best_unavailable"] = self.unscored
        return out


def warning_text(w: dict) -> str:
    """One line for a drop warning (worker log, CLI)."""
    return (f"round {w['round']}: held-out agreement {w['agreement']:.4f} is {w['drop']:.4f} below the best "
            f"so far ({w['best']:.4f}, round {w['best_round']})")  # fmt: skip


def choose_final(summary: dict) -> str:
    """Which model ends as final: "best round N" when keep_best saved a best and the final model's
    agreement fell more than `agreement_drop_warn` below it (the run tipped over), else "last step".

    Within that margin the last step stays: on a few held-out prompts one report that flips moves the
    agreement by a few hundredths, so the best of many rounds is partly the luckiest one, while the
    last step is the one trained longest at the lowest learning rate. Reads the summary keys
    `DcdRounds.on_finish` writes."""
    best, last = summary.get("best_agreement"), summary.get("final_agreement")
    saved = summary.get("keep_best") and summary.get("best_dir") is not None
    margin = summary.get("agreement_drop_warn", 0.0)
    if saved and best is not None and last is not None and best - last > margin + _EPS:
        return f"best round {summary['best_round']}"
    return LAST_STEP


def _swap_into(staged: Path, target: Path) -> None:
    """Rename a finished local directory into place, dropping what `target` held."""
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staged.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def _staging(target: Path) -> Path:
    staged = target.with_name(f".{target.name}.tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.parent.mkdir(parents=True, exist_ok=True)
    return staged


def replace_tree(src: str, dst: str) -> str:
    """Make directory `dst` (local or s3://) a copy of directory `src`, dropping whatever `dst` held."""
    src_fs, src_path = resolve_fs(src)
    if is_s3(dst):
        dst_fs, dst_path = resolve_fs(dst)
        dst_fs.delete_dir_contents(dst_path, missing_dir_ok=True)
        return copy_tree(src_fs, src_path, dst)
    target = Path(dst).expanduser()
    staged = _staging(target)
    copy_tree(src_fs, src_path, str(staged))
    _swap_into(staged, target)
    return dst


def save_best(parts: Any, output_dir: str) -> str:
    """Rank 0: the student as it is now, as a loadable checkpoint in `<output_dir>/best` (the layout of final).

    `parts`: the worker's `ModelParts` (unwrapped model, tokenizer, image processor, MASK id, block
    size); its weights are whole on rank 0 except under ZeRO-3, where this is never called."""
    from echo_ray.train.checkpointing import export_hf  # torch + the engines: only where a model is saved

    dst = join(output_dir, BEST_DIR)
    if is_s3(dst):
        with tempfile.TemporaryDirectory(prefix="echo-dcd-best-") as tmp:
            export_hf(parts.model, parts.model.state_dict(), parts, Path(tmp))
            return replace_tree(tmp, dst)
    target = Path(dst).expanduser()
    staged = _staging(target)
    export_hf(parts.model, parts.model.state_dict(), parts, staged)
    _swap_into(staged, target)
    return dst


def promote_best(summary: dict, output_dir: str) -> dict:
    """Driver, after `export_final`: make `<output_dir>/final` the best round's model when the last step
    fell more than the drop margin below it (`choose_final`), keeping the last-step model in
    `<output_dir>/last`. Returns the summary
    with "final_from" (and "last_dir" when final was replaced)."""
    out = dict(summary)
    choice = choose_final(out)
    best_dir = out.get("best_dir")
    if choice != LAST_STEP and not exists(best_dir):
        log.warning("DCD: %s should become final, but %s is missing; final stays the last step", choice, best_dir)
        choice = LAST_STEP
    if choice != LAST_STEP:
        final, last = join(output_dir, FINAL_DIR), join(output_dir, LAST_DIR)
        replace_tree(final, last)
        replace_tree(best_dir, final)
        out["last_dir"] = last
        log.info("DCD: final model = %s (agreement %.4f > last step's %.4f); the last-step model is in %s",
                 choice, out["best_agreement"], out["final_agreement"], last)  # fmt: skip
    out["final_from"] = choice
    return out

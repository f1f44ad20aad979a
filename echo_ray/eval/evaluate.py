"""The evaluation job: decode a held-out split with each (checkpoint, decoder) row and score it.

Order of work, so that bad input fails before any compute: read and check the split
(echo_ray.eval.dataset), resolve and check every row against its checkpoint's metadata
(echo_ray.eval.plan), then load the SentenceEncoder once, and only then decode row by row (in
this process, or on a Ray Data actor pool when `eval.num_actors > 0`) and score
(echo_ray.eval.rows). Rows that share a checkpoint share one loaded model. The decode section's
`language` is replaced by the evaluated split language.

With `eval.grounding` (default) every row decodes the split a second time with each study's
images swapped for another's (echo_ray.eval.grounding): the row gains bootstrap 95 % intervals and
the grounding columns, details.json the swap, predictions the swapped-image text.

Outputs of `write_evaluation(run, out_dir)` (prefixed for `name="ablation"` etc.): table.md, table.json, tradeoff.png (quality vs tokens
per forward, echo_ray.eval.table), details.json (per-finding clinical scores, skipped optional
metrics, split counts), predictions/<row>.jsonl (one line per report, when enabled) and the
resolved config (echo_config.yaml).

Usage:
    row = evaluate_model("runs/dcd/final", "data_out/normalized", "eval", cfg.eval, cfg.decode,
                         cfg.prompt, label="ECHO one-step")
    rows = evaluate_rows([EvalRow(model=ar, mode="ar"), EvalRow(model=echo)], data, "eval",
                         cfg.eval, cfg.decode, cfg.prompt)
    paths = evaluate_config(load_config("configs/tiny.yaml"))     # what `echo-ray eval` runs
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from echo_ray.config import DecodeConfig, EchoConfig, EvalConfig, EvalRow, ModelConfig, PromptConfig, save_config
from echo_ray.errors import ConfigError
from echo_ray.eval.dataset import load_eval_split
from echo_ray.eval.grounding import SwappedSplit, swap_images
from echo_ray.eval.plan import PlannedRow, plan_rows
from echo_ray.eval.semscore import SentenceEncoder
from echo_ray.eval.split import EvalSplit

log = logging.getLogger(__name__)


@dataclass
class EvalRun:
    rows: list[dict[str, Any]]
    details: dict[str, dict[str, Any]]  # row name -> details (echo_ray.eval.rows)
    split: EvalSplit
    predictions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # row name -> records


@lru_cache(maxsize=2)
def get_encoder(path: str = "") -> SentenceEncoder:
    """One SentenceEncoder per path per process (loading costs seconds); '' = the default model."""
    return SentenceEncoder(path)


def _decode_row(row: PlannedRow, split: EvalSplit, eval_cfg: EvalConfig, prompt_cfg: PromptConfig,
                model_cfg: ModelConfig, loaded: dict) -> list[dict[str, Any]]:  # fmt: skip
    """Records of one row; `loaded` keeps the last checkpoint so consecutive rows can share it."""
    if eval_cfg.num_actors > 0:
        from echo_ray.eval.parallel import decode_with_ray

        return decode_with_ray(row, split.studies, split.language, eval_cfg, prompt_cfg, model_cfg)
    from echo_ray.decode.generator import ReportGenerator
    from echo_ray.eval.decoding import decode_studies
    from echo_ray.model.checkpoint import load_checkpoint

    if loaded.get("path") != row.local:
        loaded.clear()  # one model in memory at a time
        loaded.update(path=row.local, ckpt=load_checkpoint(str(row.local), model_cfg, eval_cfg.device))
    gen = ReportGenerator(loaded["ckpt"], row.decode, prompt_cfg, override_block=row.override_block)
    return decode_studies(gen, split.studies, split.language, eval_cfg.batch_size, label=row.name)


def _add_grounding(scored: dict[str, Any], details: dict[str, Any], records: list[dict[str, Any]], row: PlannedRow,
                   data: EvalSplit, swapped: SwappedSplit, cfg: EvalConfig, prompt_cfg: PromptConfig,
                   model_cfg: ModelConfig, loaded: dict) -> dict[str, Any]:  # fmt: skip
    """Decode the row again on the swapped-image split; add intervals and grounding columns."""
    from echo_ray.eval.grounding import grounding_columns, insert_after, interval_columns

    other = _decode_row(row, swapped.split, cfg, prompt_cfg, model_cfg, loaded)
    own, refs = [r["text"] for r in records], data.references
    cols, extra = grounding_columns(own, [r["text"] for r in other], refs, swapped.perm, cfg.bootstrap_samples,
                                    cfg.bootstrap_seed)  # fmt: skip
    intervals = interval_columns(own, refs, cfg.bootstrap_samples, cfg.bootstrap_seed)
    for rec, o, j in zip(records, other, swapped.perm):
        rec["swapped_images_from"], rec["text_swapped_images"] = data.studies[j].study_id, o["text"]
    details["grounding"] = extra
    scored = insert_after(scored, "rouge_l", {"rouge_l_ci95": intervals["rouge_l_ci95"]})
    return insert_after(scored, "macro_f1", {"micro_f1_ci95": intervals["micro_f1_ci95"], **cols})


def check_settings(eval_cfg: EvalConfig, decode_cfg: DecodeConfig) -> None:
    """Numeric settings that would otherwise fail (or loop on nothing) mid-run."""
    for name, value in (("eval.max_reports", eval_cfg.max_reports), ("eval.batch_size", eval_cfg.batch_size),
                        ("decode.max_new_tokens", decode_cfg.max_new_tokens)):  # fmt: skip
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if eval_cfg.grounding and eval_cfg.bootstrap_samples < 1:
        raise ConfigError(f"eval.bootstrap_samples must be >= 1, got {eval_cfg.bootstrap_samples}")
    if eval_cfg.num_actors < 0:
        raise ConfigError(f"eval.num_actors must be >= 0, got {eval_cfg.num_actors}")


def run_evaluation(
    specs: list[EvalRow],
    data_dir: str,
    split: str,
    eval_cfg: EvalConfig,
    decode_cfg: DecodeConfig,
    prompt_cfg: PromptConfig,
    model_cfg: Optional[ModelConfig] = None,
    encoder: Optional[SentenceEncoder] = None,
) -> EvalRun:
    """Check everything, then decode and score each row of `specs` (empty = eval.model as one row)."""
    from echo_ray.eval.decoding import decode_wall_s
    from echo_ray.eval.rows import score_row

    model_cfg = model_cfg or ModelConfig()
    cfg = replace(eval_cfg, rows=list(specs), data=data_dir, split=split)
    check_settings(cfg, decode_cfg)
    data = load_eval_split(data_dir, split, cfg.language, cfg.max_reports)
    planned = plan_rows(cfg, decode_cfg, model_cfg, data.language)
    log.info("evaluating %d row(s) on %d '%s' studies of split '%s' in %s", len(planned), len(data.studies),
             data.language, split, data_dir)  # fmt: skip
    encoder = encoder or get_encoder(cfg.semscore_encoder)
    swapped = swap_images(data, cfg.swap_seed) if cfg.grounding else None
    run = EvalRun([], {}, data)
    loaded: dict = {}
    for row in planned:
        records = _decode_row(row, data, cfg, prompt_cfg, model_cfg, loaded)
        scored, details = score_row(row.name, row.decode, records, data.references, data.language, cfg,
                                    encoder, wall_s=decode_wall_s(records))  # fmt: skip
        if cfg.grounding:
            scored = _add_grounding(scored, details, records, row, data, swapped, cfg, prompt_cfg, model_cfg, loaded)
        details["checkpoint"] = row.model
        run.rows.append(scored)
        run.details[row.name] = details
        run.predictions[row.name] = records
        log.info("%s: semscore %.4f, micro F1 %.4f, %.1f forwards/report, %.1f tokens/s", row.name, scored["semscore"],
                 scored["micro_f1"], scored["forwards_per_report"], scored["tokens_per_s"])  # fmt: skip
    return run


def renamed_rows(run: EvalRun, names: dict[str, str]) -> EvalRun:
    """The rows of `run` named in `names` (old name -> new), renamed, in `names`' order: a second
    table that shows a row of the first under another label reuses its decodes and scores."""
    by_name = {r["name"]: r for r in run.rows}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise KeyError(f"rows {missing} are not in this evaluation (it has {sorted(by_name)})")
    out = EvalRun([], {}, run.split)
    for old, new in names.items():
        out.rows.append({**by_name[old], "name": new})
        out.details[new] = run.details[old]
        out.predictions[new] = run.predictions[old]
    return out


def merge_runs(first: EvalRun, second: EvalRun) -> EvalRun:
    """`first`'s rows, then `second`'s; both must have been scored on the same studies."""
    if [s.study_id for s in first.split.studies] != [s.study_id for s in second.split.studies]:
        raise ValueError("cannot merge evaluations of different study lists")
    clash = set(first.details) & set(second.details)
    if clash:
        raise ValueError(f"both evaluations have rows named {sorted(clash)}")
    return EvalRun(first.rows + second.rows, {**first.details, **second.details}, first.split,
                   {**first.predictions, **second.predictions})


def evaluate_rows(specs: list[EvalRow], data_dir: str, split: str, eval_cfg: EvalConfig, decode_cfg: DecodeConfig,
                  prompt_cfg: PromptConfig, model_cfg: Optional[ModelConfig] = None,
                  encoder: Optional[SentenceEncoder] = None) -> list[dict[str, Any]]:  # fmt: skip
    """Table rows for several (checkpoint, mode, block size) settings; see `run_evaluation`."""
    return run_evaluation(specs, data_dir, split, eval_cfg, decode_cfg, prompt_cfg, model_cfg, encoder).rows


def evaluate_model(ckpt_path: str, data_dir: str, split: str, eval_cfg: EvalConfig, decode_cfg: DecodeConfig,
                   prompt_cfg: PromptConfig, label: str = "", model_cfg: Optional[ModelConfig] = None,
                   encoder: Optional[SentenceEncoder] = None, override_block: bool = False) -> dict[str, Any]:  # fmt: skip
    """One table row: `ckpt_path` decoded with `decode_cfg` on `split`, scored (flat dict)."""
    spec = EvalRow(name=label, model=ckpt_path, override_block=override_block)
    return evaluate_rows([spec], data_dir, split, eval_cfg, decode_cfg, prompt_cfg, model_cfg, encoder)[0]


def default_title(split: EvalSplit) -> str:
    folder = Path(split.data.rstrip("/")).name or split.data
    return f"{split.split} split of {folder} ({split.language}, {len(split.studies)} studies)"


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=-]+", "_", name).strip("_") or "row"


def _write_predictions(run: EvalRun, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    refs = run.split.references
    for name, records in run.predictions.items():
        lines = [json.dumps({"study_id": r["study_id"], "reference": ref, "prediction": r["text"],
                             **{k: r[k] for k in ("tokens", "forward_passes", "hit_max_length", "complete")},
                             **{k: r[k] for k in ("swapped_images_from", "text_swapped_images") if k in r}},
                            ensure_ascii=False)
                 for r, ref in zip(records, refs)]  # fmt: skip
        (folder / f"{_slug(name)}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def write_evaluation(run: EvalRun, out_dir: str | Path, title: str = "", quality_key: str = "semscore",
                     cfg: Optional[EchoConfig] = None, predictions: bool = True,
                     name: str = "table") -> dict[str, Path]:  # fmt: skip
    """Write the table files, details, predictions and the config (module doc); returns their paths.

    `name` other than "table" (a second table in the same folder, e.g. "ablation") prefixes the
    files: ablation.md/.json, ablation_tradeoff.png, ablation_details.json, ablation_predictions/.
    """
    from echo_ray.eval.table import write_results

    out = Path(out_dir)
    prefix = "" if name == "table" else f"{name}_"
    paths = write_results(run.rows, out, title or default_title(run.split), quality_key=quality_key, name=name)
    s = run.split
    details = {"data": s.data, "split": s.split, "language": s.language, "studies": len(s.studies),
               "rows_in_split": s.rows_in_split, "rows_in_language": s.rows_in_language,
               "rows_per_language": s.languages, "rows": run.details}  # fmt: skip
    paths["details"] = out / f"{prefix}details.json"
    paths["details"].write_text(json.dumps(details, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    if predictions:
        paths["predictions"] = _write_predictions(run, out / f"{prefix}predictions")
    if cfg is not None:
        paths["config"] = save_config(cfg, out)
    return paths


def evaluate_config(cfg: EchoConfig) -> dict[str, Path]:
    """Run the evaluation the config describes (`eval` + `decode` + `prompt` + `model`), write outputs."""
    e = cfg.eval
    run = run_evaluation(e.rows, e.data, e.split, e, cfg.decode, cfg.prompt, cfg.model)
    return write_evaluation(run, e.output_dir, e.title, e.quality_key, cfg, e.save_predictions)

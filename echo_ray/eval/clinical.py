"""Clinical efficacy: finding-level precision/recall/F1 from the rule labeler, plus optional hooks.

Each generated and reference report is labeled with `echo_ray.clinical.labeler.label_report` over the
14 CheXpert observations. The positive class is status 1 *and* uncertain (-1): a report that says
"possible effusion" raises the finding, the way CE metrics on MIMIC-CXR are usually computed with
the "uncertain as positive" (U-Ones) policy (Irvin et al. 2019; Miura et al. 2021). Per observation
tp/fp/fn are summed over reports; micro F1 pools them, macro F1 averages F1 over observations that
occur in references or predictions (an observation absent from both says nothing). Precision with
no predictions, recall with no support, and F1 with both zero are 0.0 (sklearn's zero_division=0).

Optional model-based metrics (RaTEScore, RadGraph F1, CheXbert F1) run only when the EvalConfig
field names an existing local path *and* the package is installed; nothing is downloaded. Otherwise
their entry is a one-line skip reason. Local layouts expected:
    ratescore_weights: directory with `ner/` (RaTE-NER-Deberta) and `encoder/` (BioLORD-2023-C)
    radgraph_weights:  the package's model cache directory (holding radgraph-xl), passed as
                       model_cache_dir
    chexbert_weights:  the chexbert.pth checkpoint file (its directory becomes f1chexbert's cache)

Usage:
    scores = clinical_scores(predictions, references)
    scores["micro_f1"], scores["per_finding"]["Pleural Effusion"]["f1"]
    optional_scores(predictions, references, cfg.eval)  # {'ratescore': 'skipped: ...', ...}
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Iterable

from echo_ray.clinical.labeler import NEGATIVE, OBSERVATIONS, label_report
from echo_ray.errors import InputError


def positive_findings(text: str) -> set[str]:
    """Observations the report raises (status 1 or uncertain -1)."""
    return {obs for obs, status in label_report(text).items() if status != NEGATIVE}


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def finding_prf(predicted: Iterable[set[str]], gold: Iterable[set[str]]) -> dict[str, Any]:
    """Per-observation and pooled P/R/F1 for paired sets of positive observations.

    Returns {"micro_precision", "micro_recall", "micro_f1", "macro_f1",
    "per_finding": {obs: {"precision", "recall", "f1", "support", "predicted"}}}.
    """
    pred_list, gold_list = list(predicted), list(gold)
    if len(pred_list) != len(gold_list):
        raise InputError(f"{len(pred_list)} predictions but {len(gold_list)} references; they must pair up")
    counts = {obs: [0, 0, 0] for obs in OBSERVATIONS}  # tp, fp, fn
    for p, g in zip(pred_list, gold_list):
        unknown = (p | g) - counts.keys()
        if unknown:
            raise InputError(f"unknown observation(s) {sorted(unknown)}; expected names from OBSERVATIONS")
        for obs in p & g:
            counts[obs][0] += 1
        for obs in p - g:
            counts[obs][1] += 1
        for obs in g - p:
            counts[obs][2] += 1
    per: dict[str, dict[str, float]] = {}
    for obs, (tp, fp, fn) in counts.items():
        prec, rec = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        per[obs] = {"precision": prec, "recall": rec, "f1": _f1(prec, rec), "support": tp + fn,
                    "predicted": tp + fp}
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    micro_p, micro_r = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
    present = [d["f1"] for d in per.values() if d["support"] or d["predicted"]]
    return {
        "micro_precision": micro_p,
        "micro_recall": micro_r,
        "micro_f1": _f1(micro_p, micro_r),
        "macro_f1": sum(present) / len(present) if present else 0.0,
        "per_finding": per,
    }


def clinical_scores(preds: list[str], refs: list[str]) -> dict[str, Any]:
    """Labeler-based CE scores of generated reports `preds` against reference reports `refs`."""
    if len(preds) != len(refs):
        raise InputError(f"{len(preds)} predictions but {len(refs)} references; they must pair up")
    out = finding_prf([positive_findings(p) for p in preds], [positive_findings(r) for r in refs])
    out["n"] = len(preds)
    return out


def _unavailable(path: str, package: str, field_name: str) -> str | None:
    """Skip reason for an optional metric, or None when it can run."""
    if not path:
        return f"skipped: eval.{field_name} is not set"
    if not Path(path).expanduser().exists():
        return f"skipped: eval.{field_name} path does not exist: {path}"
    if importlib.util.find_spec(package) is None:
        return f"skipped: package '{package}' is not installed"
    return None


def _ratescore(preds: list[str], refs: list[str], weights: str) -> float:
    import torch
    from RaTEScore import RaTEScore  # optional package; imported only when configured

    root = Path(weights).expanduser()
    scorer = RaTEScore(bert_model=str(root / "ner"), eval_model=str(root / "encoder"),
                       use_gpu=torch.cuda.is_available())
    scores = scorer.compute_score(preds, refs)
    return float(sum(scores) / len(scores)) if scores else 0.0


def _radgraph(preds: list[str], refs: list[str], weights: str) -> float:
    from radgraph import F1RadGraph  # optional package; imported only when configured

    scorer = F1RadGraph(reward_level="partial", model_type="radgraph-xl",
                        model_cache_dir=str(Path(weights).expanduser()))
    return float(scorer(hyps=preds, refs=refs)[0])


def _chexbert(preds: list[str], refs: list[str], weights: str) -> float:
    import os

    # f1chexbert looks for chexbert.pth in its cache directory; point it at the local file's folder.
    os.environ["CHEXBERT_CACHE_DIR"] = str(Path(weights).expanduser().parent)
    from f1chexbert import F1CheXbert  # optional package; imported only when configured

    scorer = F1CheXbert()
    _, _, report, _ = scorer(hyps=preds, refs=refs)
    return float(report["micro avg"]["f1-score"])


_OPTIONAL = {
    "ratescore": ("ratescore_weights", "RaTEScore", _ratescore),
    "radgraph_f1": ("radgraph_weights", "radgraph", _radgraph),
    "chexbert_f1": ("chexbert_weights", "f1chexbert", _chexbert),
}


def optional_scores(preds: list[str], refs: list[str], cfg: Any) -> dict[str, float | str]:
    """RaTEScore / RadGraph F1 / CheXbert F1 from local weights, or a one-line skip reason each.

    `cfg` is an `echo_ray.config.EvalConfig` (only its *_weights fields are read).
    """
    if len(preds) != len(refs):
        raise InputError(f"{len(preds)} predictions but {len(refs)} references; they must pair up")
    out: dict[str, float | str] = {}
    for name, (field_name, package, fn) in _OPTIONAL.items():
        path = getattr(cfg, field_name)
        reason = _unavailable(path, package, field_name)
        out[name] = reason if reason is not None else fn(preds, refs, path)
    return out

"""Natural-language-generation metrics: BLEU-1..4, ROUGE-L, CIDEr (and METEOR when Java exists).

Scorers are pycocoevalcap's (Chen et al., "Microsoft COCO Captions: Data Collection and Evaluation
Server", 2015), the implementations report-generation papers (R2Gen and successors) quote. Their
Bleu/Rouge/Cider classes are pure Python; we do NOT use its PTBTokenizer (it shells out to Java).
Instead `tokenize` lowercases and splits punctuation into its own tokens (kept, as in R2Gen's
"word word . word ." reports); CJK characters become one token each (the usual per-character
scoring of Chinese reports), Latin words and numbers inside Chinese text stay whole words.

BLEU is corpus-level (clipped counts pooled over all pairs, "closest" reference length), ROUGE-L is
the mean per-pair LCS F-measure with beta 1.2, CIDEr is CIDEr-D's base CIDEr with idf from the
references of this corpus (so it needs more than one pair to be informative). METEOR runs
pycocoevalcap's bundled meteor-1.5.jar, English only, when `java` is on PATH; otherwise it is left
out and one warning line says why. An empty prediction is scored as one token that matches
nothing (pycocoevalcap's ROUGE divides by the candidate length).

Usage:
    scores = linguistic_scores(predictions, references, language="en")
    scores["bleu4"], scores["rouge_l"], scores["cider"]
"""

from __future__ import annotations

import logging
import re
import shutil
from typing import Optional

from echo_ray.errors import InputError

log = logging.getLogger(__name__)

_TOKEN = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]|[^\W\u3400-\u9fff\uf900-\ufaff]+|[^\w\s]")
EMPTY_TOKEN = "<empty>"  # cannot come out of `tokenize` ("<" is split off), so it never matches


def tokenize(text: str) -> list[str]:
    """Lowercase; words, numbers and single punctuation marks; each CJK character on its own."""
    return _TOKEN.findall(text.lower())


def meteor_unavailable(language: str) -> Optional[str]:
    """Why METEOR cannot run here (None when it can)."""
    if language != "en":
        return f"METEOR skipped: meteor-1.5 is run for English only (language={language!r})"
    if shutil.which("java") is None:
        return "METEOR skipped: pycocoevalcap's METEOR needs Java and `java` is not on PATH"
    return None


def _prepare(predictions: list[str], references: list[str]) -> tuple[dict, dict]:
    """pycocoevalcap inputs {i: [tokenized text]} for references (gts) and predictions (res)."""
    if len(predictions) != len(references):
        raise InputError(f"{len(predictions)} predictions but {len(references)} references; they must pair up")
    if not predictions:
        raise InputError("no prediction/reference pairs to score")
    gts, res = {}, {}
    for i, (pred, ref) in enumerate(zip(predictions, references)):
        if not isinstance(pred, str) or not isinstance(ref, str):
            raise InputError(f"pair {i}: prediction and reference must be strings")
        ref_tokens = tokenize(ref)
        if not ref_tokens:
            raise InputError(f"pair {i}: reference report is empty")
        gts[i] = [" ".join(ref_tokens)]
        res[i] = [" ".join(tokenize(pred)) or EMPTY_TOKEN]
    return gts, res


def _meteor(gts: dict, res: dict) -> float:
    from pycocoevalcap.meteor.meteor import Meteor

    scorer = Meteor()  # starts one JVM; its __del__ stops it
    try:
        score, _ = scorer.compute_score(gts, res)
    finally:
        del scorer
    return float(score)


def linguistic_scores(
    predictions: list[str], references: list[str], language: str = "en", meteor: Optional[bool] = None
) -> dict[str, float]:
    """Corpus NLG scores of paired reports: keys bleu1..bleu4, rouge_l, cider (+ meteor).

    `meteor=None` runs METEOR when possible (Java on PATH, English); False never runs it.
    """
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    if language not in ("en", "zh"):
        raise InputError(f"unknown language {language!r}; expected 'en' or 'zh'")
    gts, res = _prepare(predictions, references)
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    out = {f"bleu{n + 1}": float(b) for n, b in enumerate(bleu)}
    out["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    out["cider"] = float(Cider().compute_score(gts, res)[0])
    if meteor is not False:
        reason = meteor_unavailable(language)
        if reason is None:
            out["meteor"] = _meteor(gts, res)
        else:
            log.warning(reason)
    return out

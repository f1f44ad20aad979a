"""Does a row read the image? Scores of the same row with every study's images swapped.

Each study's images are replaced by another study's, by a fixed, seeded derangement (a
permutation without fixed points, Sattolo's algorithm: one random cycle over all studies, so no
study keeps its own images), and the row decodes the split again. References stay. A model that
writes from the image loses clinical F1 under the swap; one that writes a text prior does not.
Columns added to a table row (next to its own-image figures):

  micro_f1_ci95, rouge_l_ci95       bootstrap 95 % intervals over studies (echo_ray.eval.bootstrap)
  micro_f1_swapped_images           clinical micro-F1 of the swapped-image reports vs the references
  macro_f1_swapped_images           the same, macro-F1
  micro_f1_drop_swapped             micro_f1 - micro_f1_swapped_images (the grounding drop)
  micro_f1_drop_swapped_ci95        its paired bootstrap 95 % interval
  reports_changed_by_swap           fraction of studies whose report text differs under the swap
  distinct_report_fraction          distinct reports / studies (own images): 1 / n = one report for all
  reference_distinct_fraction       the same for the references, the ceiling to compare with

Usage:
    swapped = swap_images(split, seed=0)           # an EvalSplit; decode it like the split itself
    cols, details = grounding_columns(own_texts, swapped_texts, split.references, swapped.perm)
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Any

from echo_ray.errors import InputError
from echo_ray.eval.bootstrap import drop_interval, finding_counts, mean_interval, micro_f1_interval
from echo_ray.eval.clinical import finding_prf, positive_findings
from echo_ray.eval.split import EvalSplit

INTERVAL_KEYS = ("micro_f1_ci95", "rouge_l_ci95")
GROUNDING_KEYS = ("micro_f1_swapped_images", "macro_f1_swapped_images", "micro_f1_drop_swapped",
                  "micro_f1_drop_swapped_ci95", "reports_changed_by_swap", "distinct_report_fraction",
                  "reference_distinct_fraction")  # fmt: skip


def derangement(n: int, seed: int) -> list[int]:
    """perm[i] != i for every i: study i gets the images of study perm[i] (Sattolo's algorithm)."""
    if n < 2:
        raise InputError(f"swapping images needs at least 2 studies, got {n} (or set eval.grounding=false)")
    perm = list(range(n))
    rng = random.Random(seed)
    for i in range(n - 1, 0, -1):
        j = rng.randrange(i)  # j < i: a single cycle, so no fixed point
        perm[i], perm[j] = perm[j], perm[i]
    return perm


@dataclass
class SwappedSplit:
    split: EvalSplit  # same studies and references, other studies' images
    perm: list[int]  # study i shows the images of study perm[i]


def swap_images(split: EvalSplit, seed: int) -> SwappedSplit:
    """The split with each study's image paths taken from another study (module doc)."""
    perm = derangement(len(split.studies), seed)
    studies = [replace(s, image_paths=split.studies[j].image_paths) for s, j in zip(split.studies, perm)]
    return SwappedSplit(replace(split, studies=studies), perm)


def distinct_fraction(texts: list[str]) -> float:
    """Distinct texts (whitespace-trimmed) over all texts."""
    if not texts:
        raise InputError("no reports to count")
    return len({t.strip() for t in texts}) / len(texts)


def rouge_l_per_report(texts: list[str], refs: list[str]) -> list[float]:
    """pycocoevalcap ROUGE-L of each (prediction, reference) pair; their mean is the corpus score."""
    from pycocoevalcap.rouge.rouge import Rouge

    from echo_ray.eval.linguistic import _prepare

    gts, res = _prepare(texts, refs)
    return [float(x) for x in Rouge().compute_score(gts, res)[1]]


def interval_columns(texts: list[str], refs: list[str], n_boot: int, seed: int) -> dict[str, list[float]]:
    """Bootstrap 95 % intervals of micro-F1 and ROUGE-L of one row (own images)."""
    gold = [positive_findings(r) for r in refs]
    counts = finding_counts([positive_findings(t) for t in texts], gold)
    return {
        "micro_f1_ci95": list(micro_f1_interval(counts, n_boot, seed)),
        "rouge_l_ci95": list(mean_interval(rouge_l_per_report(texts, refs), n_boot, seed)),
    }


def grounding_columns(own: list[str], swapped: list[str], refs: list[str], perm: list[int], n_boot: int = 1000,
                      seed: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:  # fmt: skip
    """(row columns, details) comparing own-image and swapped-image reports of one row (module doc)."""
    if not (len(own) == len(swapped) == len(refs) == len(perm)):
        raise InputError(f"{len(own)} own, {len(swapped)} swapped reports, {len(refs)} references and "
                         f"{len(perm)} swaps must pair up")  # fmt: skip
    gold = [positive_findings(r) for r in refs]
    own_sets, swap_sets = [positive_findings(t) for t in own], [positive_findings(t) for t in swapped]
    own_prf, swap_prf = finding_prf(own_sets, gold), finding_prf(swap_sets, gold)
    cols = {
        "micro_f1_swapped_images": swap_prf["micro_f1"],
        "macro_f1_swapped_images": swap_prf["macro_f1"],
        "micro_f1_drop_swapped": own_prf["micro_f1"] - swap_prf["micro_f1"],
        "micro_f1_drop_swapped_ci95": list(drop_interval(finding_counts(own_sets, gold),
                                                         finding_counts(swap_sets, gold), n_boot, seed)),
        "reports_changed_by_swap": sum(a.strip() != b.strip() for a, b in zip(own, swapped)) / len(own),
        "distinct_report_fraction": distinct_fraction(own),
        "reference_distinct_fraction": distinct_fraction(refs),
    }  # fmt: skip
    details = {"swap_permutation": list(perm),
               "swapped_per_finding": swap_prf["per_finding"],
               "findings_changed_by_swap": sum(a != b for a, b in zip(own_sets, swap_sets)) / len(own)}  # fmt: skip
    return cols, details


def insert_after(row: dict[str, Any], anchor: str, cols: dict[str, Any]) -> dict[str, Any]:
    """A copy of `row` with `cols` placed right after key `anchor` (at the end if it is absent)."""
    if anchor not in row:
        return {**row, **cols}
    out: dict[str, Any] = {}
    for k, v in row.items():
        out[k] = v
        if k == anchor:
            out.update(cols)
    return out

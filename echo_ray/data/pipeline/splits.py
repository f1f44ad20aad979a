"""Stage 5, splits: train / eval by study group, and a DCD subset of train rows.

Leakage rule: studies that share a patient id or any image path form one group (union-find), and a
group goes to one split whole, so no study, no image and no patient appears in two splits; a
study's English and Chinese rows always share its split.
Eval (paper: 2,000 English + 2,000 Chinese reports balanced over MIMIC-CXR, CheXpert-Plus and
ReXGradient): up to `eval_per_language` studies (and at most `eval_fraction` of the eligible ones),
with equal quotas over the eval sources present (`splits.eval_sources`; every source when none is
present), leftover quota flowing to sources with studies to spare. When Chinese copies exist, only
groups with at least one are eligible, those whose studies all have one first, so eval holds about
as many Chinese as English rows. A group that would overflow its quota is skipped, so the counts
are upper bounds.
DCD (paper: 30,000 rows of the RAD training set, proportional to sources): min(dcd_rows, train
rows) train rows, each source's share proportional to its share of train rows; seeded.

Usage:
    split_of = assign_splits(studies, cfg.splits)          # uid -> "train" | "eval"
    dcd = choose_dcd(train_rows, cfg.splits)               # {(uid, language)}
"""

from __future__ import annotations

import random
from collections import defaultdict
from dataclasses import dataclass, field

from echo_ray.config import SplitConfig


@dataclass
class Study:
    uid: str
    source: str
    patient_id: str = ""
    image_paths: list[str] = field(default_factory=list)
    has_zh: bool = False


def _groups(studies: list[Study]) -> list[list[int]]:
    """Connected components of studies linked by a shared patient id or image path."""
    parent = list(range(len(studies)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, s in enumerate(studies):
        keys = [f"patient:{s.patient_id}"] if s.patient_id else []
        for key in keys + [f"image:{p}" for p in s.image_paths]:
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    comps: dict[int, list[int]] = defaultdict(list)
    for i in range(len(studies)):
        comps[find(i)].append(i)
    return sorted(comps.values(), key=lambda c: studies[c[0]].uid)


def _eval_quota(n_target: int, sources: list[str], available: dict[str, int]) -> dict[str, int]:
    """Equal shares of n_target over sources, capped by availability, leftovers redistributed."""
    quota = {s: 0 for s in sources}
    remaining = n_target
    open_sources = [s for s in sources if available[s] > 0]
    while remaining > 0 and open_sources:
        share = max(1, remaining // len(open_sources))
        for s in list(open_sources):
            take = min(share, available[s] - quota[s], remaining)
            quota[s] += take
            remaining -= take
            if quota[s] >= available[s]:
                open_sources.remove(s)
            if remaining == 0:
                break
    return quota


def assign_splits(studies: list[Study], cfg: SplitConfig) -> dict[str, str]:
    """uid -> "train" | "eval" (see module doc)."""
    split = {s.uid: "train" for s in studies}
    any_zh = any(s.has_zh for s in studies)
    eligible = [s for s in studies if s.has_zh or not any_zh]
    present = sorted({s.source for s in eligible})
    eval_sources = [s for s in cfg.eval_sources if s in present] or present
    pool = [s for s in eligible if s.source in eval_sources]
    n_target = min(cfg.eval_per_language, int(round(cfg.eval_fraction * len(pool))))
    if n_target <= 0:
        return split
    available: dict[str, int] = defaultdict(int)
    for s in pool:
        available[s.source] += 1
    quota = _eval_quota(n_target, eval_sources, available)
    groups = _groups(studies)
    random.Random(cfg.seed).shuffle(groups)
    if any_zh:  # groups whose studies all have a Chinese copy first: eval zh rows ~ eval en rows
        groups.sort(key=lambda g: -sum(studies[i].has_zh for i in g) / len(g))
    taken: dict[str, int] = defaultdict(int)
    for g in groups:
        members = [studies[i] for i in g]
        source = members[0].source
        n_eligible = sum(1 for m in members if m.has_zh or not any_zh)
        if source not in quota or n_eligible == 0 or taken[source] + len(members) > quota[source]:
            continue
        if any(m.source != source for m in members):
            continue  # a group spanning sources would distort the per-source balance
        for m in members:
            split[m.uid] = "eval"
        taken[source] += len(members)
    return split


def choose_dcd(train_rows: list[tuple[str, str, str]], cfg: SplitConfig) -> set[tuple[str, str]]:
    """{(uid, language)}: a source-proportional seeded sample of train rows (uid, language, source)."""
    total = min(cfg.dcd_rows, len(train_rows))
    if total <= 0:
        return set()
    by_source: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for uid, lang, source in sorted(train_rows):
        by_source[source].append((uid, lang))
    rng = random.Random(cfg.seed + 1)
    shares = {s: total * len(rows) / len(train_rows) for s, rows in by_source.items()}
    counts = {s: int(v) for s, v in shares.items()}
    for s in sorted(shares, key=lambda s: shares[s] - counts[s], reverse=True)[: total - sum(counts.values())]:
        counts[s] += 1  # largest remainders, so the total is exact
    out: set[tuple[str, str]] = set()
    for s in sorted(by_source):
        out.update(rng.sample(by_source[s], counts[s]))
    return out

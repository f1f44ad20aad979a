"""The manifest: every input record accounted for, by source and reason, plus engine and config.

`counts`: in = kept + filtered + deduplicated + quarantined (`accounted` says whether it holds).
"kept" counts studies (their English rows); Chinese copies and translation failures are counted
separately under `bilingual`, since they add rows rather than consume input records.

Usage:
    manifest = build_manifest(prepare_summaries, assemble_summaries, stages, engine_info, cfg_dict)
    print(summary_text(manifest))
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

MANIFEST = "manifest.json"
STATUSES = ("kept", "filtered", "deduplicated", "quarantined")


def _zero() -> dict[str, int]:
    return {"in": 0, **{s: 0 for s in STATUSES}}


def _tally(prepare: list[dict], assemble: list[dict]) -> tuple[dict, dict, dict, dict]:
    """(by_source counts, reasons by status, split rows, bilingual counts)."""
    by_source: dict[str, dict[str, int]] = defaultdict(_zero)
    reasons: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    splits: dict[str, dict[str, Any]] = {}
    zh = {"translated": 0, "failed": 0}
    for s in prepare:
        src = by_source[s["source"]]
        src["in"] += s["in"]
        for status in ("filtered", "quarantined"):
            for reason, n in s[status].items():
                src[status] += n
                reasons[status][reason] += n
    for a in assemble:
        for key, n in a["counts"].items():
            parts = key.split("|")
            if parts[0] == "reject":
                status, source, reason = parts[1], parts[2], parts[3]
                reasons[status][reason] += n
                if status == "translation_failed":
                    zh["failed"] += n
                else:
                    by_source[source][status] += n
                continue
            split, lang, source = parts
            entry = splits.setdefault(split, {"rows": 0, "en": 0, "zh": 0, "by_source": defaultdict(int)})
            entry["rows"] += n
            entry[lang] += n
            entry["by_source"][source] += n
            if split != "dcd":
                if lang == "en":
                    by_source[source]["kept"] += n
                else:
                    zh["translated"] += n
    return by_source, reasons, splits, zh


def build_manifest(prepare: list[dict], assemble: list[dict], stages: dict[str, Any], engine: dict,
                   cfg: dict, files: dict[str, list[str]]) -> dict[str, Any]:  # fmt: skip
    """The manifest document (see module doc)."""
    by_source, reasons, splits, zh = _tally(prepare, assemble)
    total = _zero()
    for counts in by_source.values():
        for k in total:
            total[k] += counts[k]
    accounted = total["in"] == sum(total[s] for s in STATUSES) and all(
        c["in"] == sum(c[s] for s in STATUSES) for c in by_source.values()
    )
    for entry in splits.values():
        entry["by_source"] = dict(sorted(entry["by_source"].items()))
    for split in ("train", "eval", "dcd"):
        splits.setdefault(split, {"rows": 0, "en": 0, "zh": 0, "by_source": {}})
    rates = {
        name: round(st["rows"] / st["seconds"], 2)
        for name, st in stages.items()
        if isinstance(st, dict) and st.get("rows") and st.get("seconds")
    }
    return {
        "format": "echo_ray.normalized/1",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "engine": engine,
        "counts": total,
        "accounted": accounted,
        "by_source": {k: by_source[k] for k in sorted(by_source)},
        "reasons": {k: dict(sorted(v.items())) for k, v in sorted(reasons.items())},
        "splits": splits,
        "bilingual": {**stages.get("translate", {}), **zh},
        "stages": stages,
        "records_per_s": rates,
        "files": files,
        "config": cfg,
    }


def summary_text(m: dict[str, Any]) -> str:
    """A few human lines: totals, reasons, splits."""
    c = m["counts"]
    lines = [
        f"normalize: {c['in']} records in -> {c['kept']} kept, {c['filtered']} filtered, "
        f"{c['deduplicated']} deduplicated, {c['quarantined']} quarantined "
        f"({'all accounted for' if m['accounted'] else 'NOT ACCOUNTED: counts do not add up'})"
    ]
    for status, reasons in m["reasons"].items():
        lines.append(f"  {status}: " + ", ".join(f"{r}={n}" for r, n in reasons.items()))
    b = m["bilingual"]
    if b.get("status") == "skipped":
        lines.append(f"  bilingual: skipped ({b.get('reason', '')})")
    else:
        lines.append(f"  bilingual: {b.get('translated', 0)} Chinese copies, {b.get('failed', 0)} failed")
    for split in ("train", "eval", "dcd"):
        s = m["splits"][split]
        lines.append(f"  {split}: {s['rows']} rows ({s['en']} en, {s['zh']} zh)")
    return "\n".join(lines)

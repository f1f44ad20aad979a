"""Results table (Markdown + JSON) and quality-vs-speed trade-off plot (PNG).

One row per model/decoder setting, e.g. {"model": "ECHO B=8", "semscore": 0.71,
"tokens_per_forward": 7.6, ...}. Columns are the union of the rows' keys in first-seen order.
The plot puts `x_key` (default tokens per forward, from echo_ray.eval.speed) on x and the chosen
quality metric on y, one labelled point per row; rows missing either value are left out of the
plot and listed under "not_plotted" in the JSON. Non-finite floats are written as null / "nan".
A row's `<quality_key>_ci95` interval ([lo, hi], echo_ray.eval.bootstrap) becomes an error bar;
when rows carry the grounding columns (echo_ray.eval.grounding) the figure gains a second panel,
micro-F1 with own vs swapped images (echo_ray.eval.grounding_plot). In Markdown an interval is
written "[lo, hi]".

Files for name="table": table.md, table.json, tradeoff.png; for another name, e.g. "ablation":
ablation.md, ablation.json, ablation_tradeoff.png.

Usage:
    paths = write_results(rows, "eval_out", "ECHO vs AR on IU X-ray", quality_key="semscore")
    write_results(ablation_rows, "eval_out", "Ablation", name="ablation")
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from echo_ray.errors import InputError

LABEL_KEYS = ("model", "name", "setting")


def _label(row: dict[str, Any], index: int) -> str:
    for key in LABEL_KEYS:
        if row.get(key) not in (None, ""):
            return str(row[key])
    return f"row {index}"


def _clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None, at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4f}"
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, float) for v in value):
        return "[" + ", ".join(_cell(v) for v in value) + "]"  # an interval: [lo, hi]
    return str(value).replace("|", "\\|").replace("\n", " ")


def to_markdown(rows: list[dict[str, Any]], title: str) -> str:
    """A GitHub-flavoured Markdown table under a '## title' heading."""
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = [f"## {title}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_tradeoff(rows: list[dict[str, Any]], path: Path, title: str, quality_key: str, x_key: str) -> list[str]:
    """Scatter quality vs `x_key`, one labelled point per row; returns labels of rows not plotted."""
    import matplotlib

    matplotlib.use("Agg")  # file output only; no display on servers
    import matplotlib.pyplot as plt

    from echo_ray.eval.grounding_plot import draw_grounding, has_grounding

    grounding = any(has_grounding(r) for r in rows)
    fig, axes = plt.subplots(1, 2 if grounding else 1, figsize=(13.6 if grounding else 6.4, 4.8), dpi=120, squeeze=False)
    ax = axes[0][0]
    skipped = []
    for i, row in enumerate(rows):
        label = _label(row, i)
        if not (_number(row.get(x_key)) and _number(row.get(quality_key))):
            skipped.append(label)
            continue
        x, y = row[x_key], row[quality_key]
        ci = row.get(f"{quality_key}_ci95")
        if isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_number(v) for v in ci):
            ax.errorbar([x], [y], yerr=[[max(0.0, y - ci[0])], [max(0.0, ci[1] - y)]], fmt="none", capsize=3,
                        ecolor="0.5", zorder=2)  # fmt: skip
        ax.scatter([x], [y], s=60, label=label, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    if len(skipped) == len(rows):
        ax.text(0.5, 0.5, f"no row has both {x_key} and {quality_key}", ha="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(x_key.replace("_", " "))
    ax.set_ylabel(quality_key.replace("_", " "))
    ax.set_title(title)
    ax.margins(x=0.15, y=0.15)  # room for the point labels
    ax.grid(True, alpha=0.3)
    if grounding:
        draw_grounding(axes[0][1], rows, [_label(r, i) for i, r in enumerate(rows)])
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return skipped


def write_results(
    rows: list[dict],
    out_dir: str | Path,
    title: str,
    quality_key: str = "semscore",
    name: str = "table",
    x_key: str = "tokens_per_forward",
) -> dict[str, Path]:
    """Write `<name>.md`, `<name>.json` and the trade-off PNG; returns {"markdown", "json", "plot"}."""
    if not rows:
        raise InputError("no result rows to write")
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"result row {i} is {type(row).__name__}, expected a dict")
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"invalid table name {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "markdown": out / f"{name}.md",
        "json": out / f"{name}.json",
        "plot": out / ("tradeoff.png" if name == "table" else f"{name}_tradeoff.png"),
    }
    paths["markdown"].write_text(to_markdown(rows, title), encoding="utf-8")
    skipped = plot_tradeoff(rows, paths["plot"], title, quality_key, x_key)
    payload = {
        "title": title,
        "quality_key": quality_key,
        "x_key": x_key,
        "rows": _clean(rows),
        "not_plotted": skipped,
    }
    paths["json"].write_text(json.dumps(payload, indent=2, allow_nan=False, default=str), encoding="utf-8")
    return paths

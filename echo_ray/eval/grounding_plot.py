"""The grounding panel of the trade-off figure: per row, micro-F1 with own vs swapped images.

For every row that has the grounding columns (echo_ray.eval.grounding), two points on one line:
micro-F1 with its own images (with the bootstrap 95 % interval as an error bar) and micro-F1 with
swapped images; the row label carries the drop and its interval. ROUGE-L (with its interval) is
drawn as a third marker. A row that does not read its image shows its two points on top of each
other.

Usage:
    fig, (ax_tradeoff, ax_grounding) = plt.subplots(1, 2)
    draw_grounding(ax_grounding, rows, labels)
"""

from __future__ import annotations

from typing import Any

KEYS = ("micro_f1", "micro_f1_ci95", "micro_f1_swapped_images", "micro_f1_drop_swapped", "micro_f1_drop_swapped_ci95")


def has_grounding(row: dict[str, Any]) -> bool:
    return all(row.get(k) is not None for k in KEYS)


def _err(value: float, ci: list[float]) -> list[list[float]]:
    """Matplotlib's asymmetric error bar for one point: [[below], [above]], never negative."""
    return [[max(0.0, value - ci[0])], [max(0.0, ci[1] - value)]]


def draw_grounding(ax, rows: list[dict[str, Any]], labels: list[str]) -> int:
    """Draw the panel (module doc); returns how many rows were drawn."""
    drawn = [(row, label) for row, label in zip(rows, labels) if has_grounding(row)]
    for y, (row, label) in enumerate(drawn):
        own, swapped = row["micro_f1"], row["micro_f1_swapped_images"]
        ax.plot([swapped, own], [y, y], color="0.7", zorder=1)
        ax.errorbar([own], [y], xerr=_err(own, row["micro_f1_ci95"]), fmt="o", color="C0", capsize=3, zorder=3,
                    label="micro-F1, own images (95% CI)" if y == 0 else None)  # fmt: skip
        ax.scatter([swapped], [y], marker="x", color="C3", zorder=3, label="micro-F1, swapped images" if y == 0 else None)
        if row.get("rouge_l") is not None and row.get("rouge_l_ci95") is not None:
            ax.errorbar([row["rouge_l"]], [y + 0.2], xerr=_err(row["rouge_l"], row["rouge_l_ci95"]), fmt="s",
                        color="C2", capsize=3, markersize=4, label="ROUGE-L (95% CI)" if y == 0 else None)  # fmt: skip
    lo, hi = zip(*[row["micro_f1_drop_swapped_ci95"] for row, _ in drawn]) if drawn else ((), ())
    ax.set_yticks(range(len(drawn)))
    ax.set_yticklabels([f"{label}\ndrop {row['micro_f1_drop_swapped']:.2f} [{a:.2f}, {b:.2f}]"
                        for (row, label), a, b in zip(drawn, lo, hi)], fontsize=7)  # fmt: skip
    ax.invert_yaxis()  # rows top to bottom in table order
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title("image grounding: own vs swapped images")
    ax.grid(True, axis="x", alpha=0.3)
    if drawn:
        ax.legend(loc="best", fontsize=7)
    return len(drawn)

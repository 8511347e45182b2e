"""Pictures of a faithfulness `Scorecard`: the curves, the randomisation cascade, the table.

Fixed layouts (no constrained-layout solve), so each renders in well under a second.
"""
from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from rvt.faithfulness import CAVEAT, RANDOM, READING, RULE, Scorecard

from .render import figure_to_image

COLUMNS = {  # metric -> column title
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "randomization_spearman": "randomised ρ",
    "infidelity": "infidelity",
    "sensitivity": "sensitivity",
}


def _colours(methods: list[str]) -> dict[str, tuple]:
    table = colormaps["tab20"](np.linspace(0, 1, 20))
    others = [m for m in methods if m != RANDOM]
    colours = {m: tuple(table[i % 20]) for i, m in enumerate(others)}
    colours[RANDOM] = (0.0, 0.0, 0.0, 1.0)
    return colours


def _style(method: str) -> dict:
    return {"linestyle": "--", "linewidth": 2.2} if method == RANDOM else {"linewidth": 1.3}


def curves_figure(card: Scorecard, fill: str | None = None, label: str | None = None) -> Figure:
    """Deletion and insertion curves of every method for one fill; the random order dashed in black.

    label: the class name (default "class <index>")."""
    fill = fill or card.fill
    label = label or f"class {card.target}"
    if fill not in card.curves:
        raise ValueError(f"no curves for fill {fill!r}: computed for {', '.join(card.curves)}")
    curves = card.curves[fill]
    colours = _colours(card.methods)
    fig = Figure(figsize=(11, 4.6), dpi=100)
    for i, (kind, values, auc, better) in enumerate((
            ("deletion", curves.deletion, curves.deletion_auc, "lower"),
            ("insertion", curves.insertion, curves.insertion_auc, "higher"))):
        ax = fig.add_axes((0.06 + i * 0.35, 0.12, 0.29, 0.78))
        ranked = sorted(card.methods, key=auc, reverse=better == "higher")
        for method in ranked:
            ax.plot(curves.fractions, values[method], color=colours[method], label=f"{auc(method):.2f} {method}",
                    **_style(method))
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel(f"share of patches {'removed' if kind == 'deletion' else 'inserted'}", fontsize=8)
        ax.set_ylabel(f"p({label})", fontsize=8)
        ax.set_title(f"{kind} (fill: {fill}); AUC, {better} is better", fontsize=9)
        ax.tick_params(labelsize=7)
        if i == 1:
            ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
                      title="insertion AUC, method", title_fontsize=7)
    return fig


def randomization_figure(card: Scorecard) -> Figure:
    """Spearman of |map| with the trained model's map as the model is randomised from the top (Adebayo et al.)."""
    result = card.randomization
    colours = _colours(card.methods)
    fig = Figure(figsize=(11, 4.6), dpi=100)
    ax = fig.add_axes((0.06, 0.2, 0.6, 0.7))
    xs = np.arange(len(result.stages) + 1)
    for method in card.methods:
        mark = "floor" if method == RANDOM else ("pass" if result.passes(method) else "FAIL")
        ax.plot(xs, [1.0, *result.spearman[method]], marker="o", markersize=3, color=colours[method],
                label=f"{mark}  {result.mean_abs(method):.2f}  {method}", **_style(method))
    ax.axhline(result.threshold, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(xs, ["trained", *[f"+ {s}" for s in result.stages]], rotation=30, ha="right", fontsize=7)
    ax.set_ylim(-1.02, 1.02)
    ax.set_ylabel("Spearman of |map| with the trained map", fontsize=8)
    ax.set_title("cascading randomisation, from the classifier head down", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6.5, loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False,
              title="verdict, mean |ρ|, method", title_fontsize=7)
    fig.text(0.06, 0.02, "A method " + RULE + ".", fontsize=7, wrap=True)
    return fig


def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "pass" if value else "FAIL"
    return f"{value:.3f}"


def scorecard_figure(card: Scorecard, label: str | None = None) -> Figure:
    """The table methods x metrics, the best of each column in bold, then one line per metric and the caveat."""
    label = label or f"class {card.target}"
    best = card.best()
    rows = [(m, card.row(m)) for m in card.methods]
    height = 1.3 + 0.22 * len(rows) + 0.2 * (len(READING) + 4)
    fig = Figure(figsize=(11, height), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    line = 0.22 / height  # one row in figure fractions
    top = 1 - 0.35 / height
    x_cols = [0.02, 0.3, 0.42, 0.54, 0.66, 0.74, 0.86]
    header = ["method", *COLUMNS.values()]
    header.insert(4, "check")
    for x, text in zip(x_cols, header):
        ax.text(x, top, text, fontsize=8, weight="bold", va="top")
    for r, (method, row) in enumerate(rows, start=1):
        y = top - r * line
        check = "floor" if method == RANDOM else _cell(row["passes_randomization"])
        cells = [method, _cell(row["deletion_auc"]), _cell(row["insertion_auc"]),
                 _cell(row["randomization_spearman"]), check,
                 _cell(row["infidelity"]), _cell(row["sensitivity"])]
        keys = [None, "deletion_auc", "insertion_auc", "randomization_spearman", None, "infidelity", "sensitivity"]
        for x, text, key in zip(x_cols, cells, keys):
            bold = key is not None and best.get(key) == method
            colour = "firebrick" if text == "FAIL" else ("grey" if method == RANDOM else "black")
            ax.text(x, y, text + (" ★" if bold else ""), fontsize=8, va="top", color=colour,
                    weight="bold" if bold else "normal")
    y = top - (len(rows) + 1.3) * line
    ax.text(0.02, y, f"fill: {card.fill}; attribution baseline: {card.baseline}; class: {label}. "
                     "★ best in its column (the random floor excluded).", fontsize=7.5, va="top")
    for key, (direction, text) in READING.items():
        y -= 0.2 / height
        name = COLUMNS[key] if key != "randomization_spearman" else "randomised ρ / check"
        ax.text(0.02, y, f"{name} ({direction} is better): {text}", fontsize=7, va="top")
    for text in ("Check: a method " + RULE + ".", CAVEAT):
        y -= 0.2 / height
        ax.text(0.02, y, text, fontsize=7, va="top", style="italic", wrap=True)
        y -= 0.2 / height
    return fig


def curves_panel(card: Scorecard, fill: str | None = None, label: str | None = None) -> Image.Image:
    return figure_to_image(curves_figure(card, fill, label))


def randomization_panel(card: Scorecard) -> Image.Image:
    return figure_to_image(randomization_figure(card))


def scorecard_panel(card: Scorecard, label: str | None = None) -> Image.Image:
    return figure_to_image(scorecard_figure(card, label))

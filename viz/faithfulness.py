"""Pictures of a faithfulness `Scorecard`: the curves, the randomisation cascade, the table.

The `*_panel` functions draw them with Pillow for the page and the report's PNGs (10-15 ms each);
the `*_figure` functions are the same pictures in matplotlib, for the report's print-quality SVGs.
"""
from __future__ import annotations

import functools
import textwrap

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from PIL import Image

from rvt.faithfulness import CAVEAT, RANDOM, READING, RULE, Scorecard

from .sheet import GREY, Chart, Sheet, ticks

COLUMNS = {  # metric -> column title
    "deletion_auc": "deletion AUC",
    "insertion_auc": "insertion AUC",
    "randomization_spearman": "randomised ρ",
    "infidelity": "infidelity",
    "sensitivity": "sensitivity",
}


def _colours(methods: list[str]) -> dict[str, tuple]:
    table = colormaps["tab20"](np.linspace(0, 1, 20))
    table = np.concatenate([table[0::2], table[1::2]])  # tab20 pairs a hue with its pale twin: all hues first
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
    header.insert(4, "check: mean |ρ|")
    for x, text in zip(x_cols, header):
        ax.text(x, top, text, fontsize=8, weight="bold", va="top")
    for r, (method, row) in enumerate(rows, start=1):
        y = top - r * line
        check = "floor" if method == RANDOM else _cell(row["passes_randomization"])
        check += f" {card.randomization.mean_abs(method):.2f}"  # the number the verdict is taken on
        cells = [method, _cell(row["deletion_auc"]), _cell(row["insertion_auc"]),
                 _cell(row["randomization_spearman"]), check,
                 _cell(row["infidelity"]), _cell(row["sensitivity"])]
        keys = [None, "deletion_auc", "insertion_auc", "randomization_spearman", None, "infidelity", "sensitivity"]
        for x, text, key in zip(x_cols, cells, keys):
            bold = key is not None and best.get(key) == method
            colour = "firebrick" if text.startswith("FAIL") else ("grey" if method == RANDOM else "black")
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


PANEL_WIDTH = 900  # px: two charts and the ranked key beside them
FAILED = (178, 34, 34)  # firebrick, as in the figures


def _rgb(colour: tuple) -> tuple[int, int, int]:
    return tuple(round(c * 255) for c in colour[:3])


def _lines(methods: list[str]) -> list[tuple[str, tuple[int, int, int], dict]]:
    """(method, colour, Chart.line style) in drawing order: the random floor last, on top, thick and dashed."""
    colours = _colours(methods)
    order = [m for m in methods if m != RANDOM] + [RANDOM] * (RANDOM in methods)
    return [(m, _rgb(colours[m]), {"width": 3, "dash": 6} if m == RANDOM else {"width": 1}) for m in order]


def _key(sheet: Sheet, x: int, y: int, title: str, rows: list[tuple[str, tuple, bool]]) -> None:
    """A key, one row per method: a line sample (dashed for the random floor) and its text."""
    sheet.text((x, y), title, 10, bold=True)
    for i, (text, colour, dashed) in enumerate(rows):
        row = y + 17 + i * 15
        for a in range(0, 20, 8 if dashed else 20):
            sheet.draw.line([x + a, row + 6, x + min(20, a + (4 if dashed else 20)), row + 6], fill=colour,
                            width=3 if dashed else 2)
        sheet.text((x + 26, row), text, 10, fill=FAILED if text.startswith("FAIL") else (0, 0, 0))


def curves_panel(card: Scorecard, fill: str | None = None, label: str | None = None) -> Image.Image:
    """`curves_figure` drawn with Pillow: deletion and insertion curves, the key ranked by insertion AUC
    with both AUCs."""
    fill = fill or card.fill
    label = label or f"class {card.target}"
    if fill not in card.curves:
        raise ValueError(f"no curves for fill {fill!r}: computed for {', '.join(card.curves)}")
    curves = card.curves[fill]
    lines = _lines(card.methods)
    colours = {m: colour for m, colour, _ in lines}
    sheet = Sheet(max(330, 70 + 15 * len(card.methods)), PANEL_WIDTH)
    shares = [(v, f"{v:g}") for v in (0, 0.25, 0.5, 0.75, 1)]
    for i, (kind, values, better) in enumerate((("deletion", curves.deletion, "lower"),
                                                 ("insertion", curves.insertion, "higher"))):
        chart = Chart(sheet, (50 + i * 290, 40, 240, 240), (0, 1), (0, 1.02), shares, ticks(0, 1, 5),
                      xlabel=f"share of patches {'removed' if kind == 'deletion' else 'inserted'}",
                      ylabel=f"p({label})", title=f"{kind} (fill: {fill}); AUC, {better} is better")
        for method, colour, style in lines:
            chart.line(curves.fractions, values[method], colour, **style)
    ranked = sorted(card.methods, key=curves.insertion_auc, reverse=True)
    _key(sheet, 625, 22, "deletion / insertion AUC, method",
         [(f"{curves.deletion_auc(m):.2f} / {curves.insertion_auc(m):.2f}  {m}", colours[m], m == RANDOM)
          for m in ranked])
    return sheet.image


def randomization_panel(card: Scorecard) -> Image.Image:
    """`randomization_figure` drawn with Pillow: each method's Spearman as the model is randomised stage by
    stage, the threshold dotted, the verdicts in the key and the rule under the chart."""
    result = card.randomization
    lines = _lines(card.methods)
    colours = {m: colour for m, colour, _ in lines}
    stages = ["trained", *[f"+ {s}" for s in result.stages]]
    sheet = Sheet(max(350, 60 + 15 * len(card.methods)) + 40, PANEL_WIDTH)
    xs = list(range(len(stages)))
    chart = Chart(sheet, (60, 40, 520, 270), (-0.5, len(stages) - 0.5), (-1.02, 1.02), (), ticks(-1, 1, 4),
                  ylabel="Spearman of |map| with the trained map",
                  title="cascading randomisation, from the classifier head down")
    for x, stage in zip(xs, stages):  # two rows of stage names, so long ones do not collide
        px = chart.px(x, -1.02)[0]
        sheet.text((px, 40 + 270 + 4 + 12 * (x % 2)), stage, 9, anchor="ma")
    chart.hline(result.threshold, GREY, f"threshold {result.threshold:g}", dash=2)
    for method, colour, style in lines:
        ys = [1.0, *result.spearman[method]]
        chart.line(xs, ys, colour, **style)
        chart.dots(xs, ys, colour, 2)
    _key(sheet, 610, 22, "verdict, mean |ρ|, method",
         [(f"{'floor' if m == RANDOM else ('pass' if result.passes(m) else 'FAIL')}  {result.mean_abs(m):.2f}  {m}",
           colours[m], m == RANDOM) for m in card.methods])
    sheet.paragraph((20, sheet.image.height - 36), "A method " + RULE + ".", 150, 10)
    return sheet.image


def scorecard_panel(card: Scorecard, label: str | None = None) -> Image.Image:
    """`scorecard_figure` drawn with Pillow: the table (best of each column in bold with a star, FAIL in
    red, the random floor in grey), then what each column means and the caveat."""
    label = label or f"class {card.target}"
    best = card.best()
    columns = [("method", None), ("deletion AUC", "deletion_auc"), ("insertion AUC", "insertion_auc"),
               ("randomised ρ", "randomization_spearman"), ("check: mean |ρ|", None), ("infidelity", "infidelity"),
               ("sensitivity", "sensitivity")]
    x_cols = [15, 235, 330, 425, 520, 640, 740]
    notes = _reading_notes()
    sheet = Sheet(40 + 17 * len(card.methods) + 30 + notes.height, PANEL_WIDTH)
    for x, (name, _) in zip(x_cols, columns):
        sheet.text((x, 12), name, 11, bold=True)
    for r, method in enumerate(card.methods):
        row, y = card.row(method), 34 + 17 * r
        check = "floor" if method == RANDOM else _cell(row["passes_randomization"])
        check += f" {card.randomization.mean_abs(method):.2f}"  # the number the verdict is taken on
        cells = [method, *(_cell(row[k]) for _, k in columns[1:4]), check, _cell(row["infidelity"]),
                 _cell(row["sensitivity"])]
        for x, text, (_, key) in zip(x_cols, cells, columns):
            star = key is not None and best.get(key) == method
            colour = FAILED if text.startswith("FAIL") else (GREY if method == RANDOM else (0, 0, 0))
            sheet.text((x, y), text + (" ★" if star else ""), 11, fill=colour, bold=star)
    y = 34 + 17 * len(card.methods) + 8
    sheet.text((15, y), f"fill: {card.fill}; attribution baseline: {card.baseline}; class: {label}. "
               "★ best in its column (the random floor excluded).", 10)
    sheet.image.paste(notes, (0, y + 22))
    return sheet.image


@functools.lru_cache(maxsize=1)
def _reading_notes() -> Image.Image:
    """What each column means, the rule and the caveat: the same for every scorecard, so drawn once."""
    notes = [f"{COLUMNS[k] if k != 'randomization_spearman' else 'randomised ρ / check'} ({d} is better): {t}"
             for k, (d, t) in READING.items()] + ["Check: a method " + RULE + ".", CAVEAT]
    sheet = Sheet(sum(15 * len(textwrap.wrap(n, 150)) + 6 for n in notes) + 4, PANEL_WIDTH)
    y = 0
    for note in notes:
        y = sheet.paragraph((15, y), note, 150, 10) + 6
    return sheet.image

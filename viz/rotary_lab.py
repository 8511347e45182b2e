"""Rotary lab pictures, drawn with Pillow: every control re-renders in a few milliseconds.

Each figure is a function of an `rvt.rotary_lab.LabView` (or of band usage / a sweep), the same
object the `rotary_lab` API returns as JSON, about 700 px wide. `LESSON` is the guided tour: control
settings plus what to look at.
"""
from __future__ import annotations

import math
import textwrap

import numpy as np
import torch
from PIL import Image

from rvt.rotary_lab import ALIASING_NOTE, LabView, kernel_cuts

from .mosaic import INK
from .sheet import GREY, LIGHT, WIDTH, Chart, Sheet, ticks

UNWRAPPED, ALIASED, WRAPPED = (158, 202, 225), (239, 138, 98), (33, 102, 172)
CUT_COLOURS = {"row": (31, 119, 180), "column": (214, 39, 40), "diagonal": (44, 160, 44)}
LINE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
                (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def _shown_bands(n: int, most: int) -> list[int]:
    return sorted(set(np.linspace(0, n - 1, min(n, most)).round().astype(int).tolist()))


# ---------------------------------------------------------------- phase images


def phase_figure(view: LabView, max_bands: int = 12) -> Image.Image:
    """Angle of each band over the patch grid (cyclic colours: one turn = one trip round the wheel),
    labelled with its step per patch, unwrapped -> wrapped (orange: aliased)."""
    schedule, (h, w) = view.schedule, view.grid
    groups = ([("row bands", range(schedule.bands)), ("column bands", range(schedule.bands, schedule.pairs))]
              if schedule.axial else [("pairs", range(schedule.pairs))])
    shown = _shown_bands(schedule.bands, max_bands)
    cols = len(shown)
    tile_w = int(min(80, (WIDTH - 20 - 6 * cols) / cols))
    tile_h = int(max(8, min(80, tile_w * h / w)))
    tile_w = int(max(8, min(tile_w, tile_h * w / h)))
    row_h = tile_h + 48
    sheet = Sheet(44 + len(groups) * row_h + 26)
    sheet.text((10, 6), f"Phase of each band over the {h}x{w} grid: {schedule.name}", 14)
    sheet.text((10, 26), "colour = angle mod 2π (the colour wheel wraps); under each: step per patch, "
               "unwrapped → wrapped (orange: aliases)", 11)
    wrapped = view.wrapped
    angles = torch.remainder(view.angles.double(), 2 * math.pi).numpy()
    for g, (name, pairs) in enumerate(groups):
        y = 46 + g * row_h
        sheet.text((10, y), name, 12)
        pairs = list(pairs)
        for c, band in enumerate(shown):
            p = pairs[band]
            x = 10 + c * ((WIDTH - 20) // cols)
            sheet.heat((x, y + 16, tile_w, tile_h), angles[..., p], "twilight", 0.0, 2 * math.pi)
            a = int(view.steps[p].argmax())  # the axis the pair turns along (axial: its own)
            step, wrap = float(view.steps[p, a]), float(wrapped[p, a])
            label = f"{'b' if schedule.axial else 'p'}{band}: {step:.2f}"
            sheet.text((x, y + 20 + tile_h), label, 10, fill=ALIASED if step > math.pi else INK)
            sheet.text((x, y + 32 + tile_h), f"→ {wrap:.2f}", 10, fill=ALIASED if step > math.pi else INK)
    if len(shown) < schedule.bands:
        sheet.text((10, sheet.image.height - 18), f"{len(shown)} of {schedule.bands} bands shown, evenly spaced", 10)
    return sheet.image


# ---------------------------------------------------------------- steps against pi


def steps_figure(view: LabView) -> Image.Image:
    """Per band: unwrapped step per patch (light; orange if above pi) and the wrapped step the model sees
    (dark), pi dashed, the training grid's unwrapped step as black ticks; one panel per axis."""
    schedule = view.schedule
    same = view.grid[0] == view.grid[1] and view.train_grid[0] == view.train_grid[1] and schedule.axial
    axes = [("rows and columns", 0)] if same else [("along rows", 0), ("along columns", 1)]
    if schedule.axial:
        index = {0: list(range(schedule.bands)), 1: list(range(schedule.bands, schedule.pairs))}
    else:
        index = {0: list(range(schedule.pairs)), 1: list(range(schedule.pairs))}
    top = max(float(view.steps.max()), float(view.train_steps.max()), math.pi) * 1.08
    wrapped = view.wrapped
    sheet = Sheet(346)
    counts = view.aliasing()
    alias_text = ", ".join(f"{counts[a]} of {schedule.bands} {'row' if a == 'row' else 'column'} bands"
                           for a in ("row", "col")) if schedule.axial else f"{sum(counts.values())} pair-axes"
    sheet.text((10, 6), f"Step per patch against π: {schedule.name}, grid {view.grid[0]}x{view.grid[1]}", 14)
    sheet.text((10, 26), f"aliased: {alias_text}", 11)
    panel_w = (WIDTH - 70) // len(axes) - (20 if len(axes) > 1 else 0)
    for i, (name, a) in enumerate(axes):
        pairs = index[a]
        x0 = 50 + i * (panel_w + 40)
        n = len(pairs)
        chart = Chart(sheet, (x0, 86, panel_w, 170), (-0.6, n - 0.4), (0, top),
                       xticks=[(j, str(j)) for j in range(0, n, 1 + n // 20)], yticks=ticks(0, top),
                       xlabel="band" if schedule.axial else "pair", ylabel="rad per patch", title=name)
        for j, p in enumerate(pairs):
            step, wrap = float(view.steps[p, a]), float(wrapped[p, a])
            chart.bar(j - 0.2, 0.4, step, ALIASED if step > math.pi else UNWRAPPED)
            chart.bar(j + 0.2, 0.4, wrap, WRAPPED)
            if view.train_grid != view.grid:
                tx, ty = chart.px(j - 0.2, float(view.train_steps[p, a]))
                chart.draw.line([tx - 5, ty, tx + 5, ty], fill=INK, width=2)
        chart.hline(math.pi, INK, "π (Nyquist)")
    items = [("unwrapped", UNWRAPPED), ("unwrapped > π", ALIASED), ("wrapped (what the model sees)", WRAPPED)]
    if view.train_grid != view.grid:
        items.append((f"unwrapped at the training grid {view.train_grid[0]}x{view.train_grid[1]}", INK))
    sheet.key((10, 42), items)
    sheet.paragraph((10, 292), ALIASING_NOTE, 110, 11)
    return sheet.image


# ---------------------------------------------------------------- kernels


def kernel_figure(view: LabView, head: dict | None = None) -> Image.Image:
    """The idealised relative-position kernel over (row, column) offsets and its 1-D cuts; with `head`
    ({"title", "mean_qk": (2h-1, 2w-1), "scores": (2h-1, 2w-1)} from rvt.rotary_lab.head_kernel and
    score_kernel) the head's kernels beside it, each titled with what it is."""
    h, w = view.grid
    panels = [("idealised: q = k spread evenly", "over the pairs: mean cos(Δangle)", view.kernel, (-1.0, 1.0))]
    if head is not None:
        limit = float(head["scores"].abs().max()) or 1.0
        panels += [("this head, rotation only:", "mean q, mean k (unrotated) rotated", head["mean_qk"], (-1.0, 1.0)),
                   ("this head, real scores:", "mean q_rot·k_rot/√d per offset", head["scores"], (-limit, limit))]
    size = 180 if head else 220
    ph, pw = (size, max(8, round(size * (2 * w - 1) / (2 * h - 1)))) if h >= w else \
        (max(8, round(size * (2 * h - 1) / (2 * w - 1))), size)
    below = head is not None  # one map: the cuts go beside it; three: below them
    chart_h = max(ph, 120)  # the cuts' chart beside a flat map (a 1x16 grid) still needs room
    sheet = Sheet(62 + (ph + 40 + 210 if below else max(ph + 100, chart_h + 40)))
    sheet.text((10, 6), f"Relative-position kernel, {view.schedule.name}, grid {h}x{w}"
               + (f": {head['title']}" if head else ""), 13)
    step = (WIDTH - 20) // len(panels)
    for i, (line1, line2, values, (lo, hi)) in enumerate(panels):
        x = 10 + i * step
        sheet.text((x, 28), line1, 11)
        sheet.text((x, 42), line2, 11)
        sheet.heat((x, 62, pw, ph), values.numpy(), "RdBu_r", lo, hi)
        cx, cy = x + pw * (w - 0.5) / (2 * w - 1), 62 + ph * (h - 0.5) / (2 * h - 1)
        r = max(3.0, pw / (2 * w - 1) / 2)
        sheet.draw.rectangle([cx - r, cy - r, cx + r, cy + r], outline=(0, 200, 0), width=2)
        sheet.colorbar((x + pw + 4, 62, 8, ph), "RdBu_r", lo, hi)
    sheet.text((10, 68 + ph), f"row offset -{h - 1} (top) .. {h - 1} (bottom)", 10)
    sheet.text((10, 82 + ph), f"column offset -{w - 1} (left) .. {w - 1}; green: offset 0", 10)
    cuts = kernel_cuts(view.kernel)
    head_cuts = kernel_cuts(head["mean_qk"]) if head else None
    span = max(h, w) - 1 or 1
    box = (50, 62 + ph + 74, WIDTH - 80, 130) if below else (330, 90, WIDTH - 350, chart_h - 28)
    chart = Chart(sheet, box, (-span - 0.5, span + 0.5), (-1.05, 1.05), xticks=ticks(-span, span, 8),
                   yticks=[(-1, "-1"), (0, "0"), (1, "1")], xlabel="offset (patches)")
    chart.hline(0.0, LIGHT)
    for name, (xs, ys) in cuts.items():
        chart.line(xs, ys, CUT_COLOURS[name], 4 if name == "row" else 2)  # row and column cuts often coincide
        chart.dots(xs, ys, CUT_COLOURS[name])
        if head_cuts:
            hx, hy = head_cuts[name]
            chart.line(hx, hy, tuple(int(c * 0.55 + 255 * 0.45) for c in CUT_COLOURS[name]), 1)
    sheet.text((box[0], box[1] - 32), "1-D cuts of the idealised kernel"
               + (" (pale: this head, rotation only)" if head else ""), 11)
    sheet.key((box[0], box[1] - 16), list(CUT_COLOURS.items()))
    return sheet.image


# ---------------------------------------------------------------- band usage


def usage_figure(usage: dict, max_rows: int = 48) -> Image.Image:
    """Heat map of each head's q/k usage per rotated pair (rvt.rotary_lab.band_usage), fast pairs marked,
    with each head's share on fast pairs and its role by the stated rule."""
    values = usage["usage"].numpy()  # (L, H, pairs)
    layers, heads, pairs = values.shape
    rows = values.reshape(layers * heads, pairs)[:max_rows]
    names = [f"L{layers_id} H{hd}" for layers_id in usage["layers"] for hd in range(heads)][:max_rows]
    cell_w = max(6, min(34, (WIDTH - 250) // pairs))
    cell_h = max(6, min(16, 420 // len(rows)))
    top = 96
    sheet = Sheet(top + cell_h * len(rows) + 24)
    sheet.text((10, 6), "How each head uses the rotary pairs: √(E|q_p|² · E|k_p|²), share per head", 14)
    sheet.text((10, 26), "Barbero et al. 2024: q/k norm on fast-turning pairs builds positional patterns, on slow "
               "pairs it carries content.", 11)
    sheet.text((10, 42), "Fast = the faster half by wrapped step at this grid (orange ticks). A head is positional "
               "if >= 60% of its usage", 11)
    sheet.text((10, 56), "is on fast pairs, semantic if <= 40%, mixed otherwise.", 11)
    x0, vmax = 60, float(rows.max()) or 1.0
    sheet.heat((x0, top, cell_w * pairs, cell_h * len(rows)), rows, "viridis", 0.0, vmax)
    for p, label in enumerate(usage["pair_labels"]):
        cx = x0 + cell_w * (p + 0.5)
        if usage["fast"][p]:
            sheet.draw.line([x0 + cell_w * p + 1, top - 4, x0 + cell_w * (p + 1) - 1, top - 4], fill=ALIASED, width=3)
        if cell_w >= 14 or p % 2 == 0:
            sheet.text((cx, top - 8), label.replace("row ", "r").replace("col ", "c").replace("pair ", "p"), 9,
                       anchor="mb")
    colour = {"positional": ALIASED, "semantic": WRAPPED, "mixed": GREY}
    share = usage["fast_share"].reshape(-1).tolist()
    roles = [r for row in usage["roles"] for r in row]
    for i, name in enumerate(names):
        y = top + cell_h * (i + 0.5)
        sheet.text((x0 - 4, y), name, 9 if cell_h < 12 else 10, anchor="rm")
        sheet.text((x0 + cell_w * pairs + 8, y), f"{share[i]:.0%} fast: {roles[i]}", 9 if cell_h < 12 else 10,
                   anchor="lm", fill=colour[roles[i]])
    sheet.colorbar((WIDTH - 40, top, 8, min(120, cell_h * len(rows))), "viridis", 0.0, vmax)
    if len(names) < layers * heads:
        sheet.text((10, sheet.image.height - 16), f"first {len(names)} of {layers * heads} heads", 10)
    return sheet.image


def ablation_figure(result: dict) -> Image.Image:
    """Band what-if (rvt.rotary_lab.band_ablation): top predictions before and after, and the attention
    change per layer and head (total variation, 0 = same rows, 1 = disjoint)."""
    change = result["attention_change"].numpy()  # (L, H)
    layers, heads = change.shape
    cell = max(12, min(36, 260 // max(layers, heads)))
    sheet = Sheet(max(70 + cell * layers + 30, 190))
    sheet.text((10, 6), "Switching off rotary bands: what changes", 14)
    spec = lambda b: str(b) if isinstance(b, int) else f"{b[0]} {b[1]}"  # 2 or ("row", 2)
    off = "; ".join(f"L{layer}: " + ", ".join(map(spec, bands)) for layer, bands in result.get("bands_off", {}).items())
    sheet.paragraph((10, 158), textwrap.shorten(f"bands off: {off or 'none'}", 300), 58, 10)
    for c, (title, top) in enumerate((("before", result["before"]), ("after", result["after"]))):
        x = 10 + c * 170
        sheet.text((x, 32), title, 12)
        for i, (label, prob) in enumerate(top[:5]):
            sheet.text((x, 52 + 18 * i), f"{prob:6.1%}  {label}", 11)
    x0 = 380
    vmax = max(float(change.max()), 1e-6)
    sheet.text((x0, 32), "attention change per layer (rows) × head", 11)
    sheet.heat((x0 + 24, 66, cell * heads, cell * layers), change, "magma", 0.0, vmax)
    for head in range(heads):
        sheet.text((x0 + 24 + cell * (head + 0.5), 62), f"H{head}", 10, anchor="mb")
    for layer in range(layers):
        sheet.text((x0 + 20, 66 + cell * (layer + 0.5)), f"L{layer}", 10, anchor="rm")
    sheet.colorbar((x0 + 30 + cell * heads, 66, 8, cell * layers), "magma", 0.0, vmax)
    return sheet.image


# ---------------------------------------------------------------- resolution sweep


def sweep_figure(sweep: dict) -> Image.Image:
    """Prediction, attention entropy and mean attention distance per layer against the inference grid
    (rvt.rotary_lab.resolution_sweep)."""
    rows = sweep["rows"]
    if not rows:
        raise ValueError("the sweep has no sizes to draw")
    xs = list(range(len(rows)))
    grid_ticks = [(i, f"{r['grid'][0]}x{r['grid'][1]}") for i, r in zip(xs, rows)]
    train = tuple(sweep["train_grid"])
    sheet = Sheet(500 if sweep["skipped"] else 452)
    sheet.text((10, 6), f"Inference grid against the training grid {train[0]}x{train[1]} (images resized: part "
               f"of any change is content scale)", 12)
    chart = Chart(sheet, (50, 50, WIDTH - 80, 110), (-0.5, len(rows) - 0.5), (0, 1.05), xticks=grid_ticks,
                   yticks=[(0, "0"), (0.5, "0.5"), (1, "1")], ylabel="top-1 probability")
    for i, r in zip(xs, rows):
        chart.bar(i, 0.5, r["prob"], WRAPPED if list(r["grid"]) == list(train) else UNWRAPPED)
        x, y = chart.px(i, r["prob"])
        sheet.text((x, y - 2), r["label"][:14], 10, anchor="mb")
    layers = len(rows[0]["entropy_share"])
    panel_w = (WIDTH - 130) // 2
    for c, (key, label) in enumerate((("entropy_share", "entropy / log(1+N), 1 = uniform"),
                                      ("distance_rel", "mean distance / uniform attention's"))):
        values = [v for r in rows for v in r[key]]
        lo, hi = min(min(values), 1.0), max(max(values), 1.0)
        pad = max(0.02, (hi - lo) * 0.08)
        lo, hi = max(0.0, lo - pad), hi + pad
        chart = Chart(sheet, (50 + c * (panel_w + 60), 230, panel_w, 160), (-0.5, len(rows) - 0.5), (lo, hi),
                       xticks=grid_ticks, yticks=ticks(lo, hi, 4), ylabel=label, xlabel="inference grid")
        chart.hline(1.0, GREY)
        for layer in range(layers):
            colour = LINE_COLOURS[layer % len(LINE_COLOURS)]
            ys = [r[key][layer] for r in rows]
            chart.line(xs, ys, colour, 2)
            chart.dots(xs, ys, colour)
    sheet.key((50, 430), [(f"layer {i}", LINE_COLOURS[i % len(LINE_COLOURS)]) for i in range(layers)])
    skipped = ", ".join(f"{s['grid'][0]}x{s['grid'][1]} ({s['reason']})" for s in sweep["skipped"])
    if skipped:
        sheet.paragraph((10, 452), f"skipped: {skipped}", 110, 10)
    return sheet.image


# ---------------------------------------------------------------- the guided lesson

LESSON = [
    {"title": "1. One rotation",
     "settings": {"schedule": "rope", "rows": 1, "cols": 16, "dim_head": 8, "max_freq_or_base": 100.0,
                  "scaling": "native"},
     "look": "A single row of 16 patches. In the column bands each pair of dimensions is turned by a fixed angle "
             "per patch: band 0 by 1 rad, band 1 by 0.1 rad. The phase picture shows the angle walking round the "
             "colour wheel; a faster band walks round more often."},
    {"title": "2. Only the offset matters",
     "settings": {"schedule": "rope", "rows": 1, "cols": 16, "dim_head": 32, "max_freq_or_base": 100.0,
                  "scaling": "native"},
     "look": "The kernel is q_rot · k_rot for q = k spread evenly over the pairs: the mean of cos(angle "
             "difference). It depends only on the offset between the two patches, is 1 at offset 0 and the "
             "same for +d and -d. Along the row it falls from 1 to about 0.5 by offset 15 as the fast bands go "
             "out of phase, with ripples; it never reaches 0 here because the row bands do not turn in one row."},
    {"title": "3. Two axes: the plus",
     "settings": {"schedule": "rvt", "rows": 7, "cols": 7, "dim_head": 24, "max_freq_or_base": 28.0,
                  "scaling": "native"},
     "look": "RvT gives half the pairs to the row and half to the column. Moving along a row leaves the row "
             "bands untouched, so the row and column cuts stay at 0.39 or above: the plus shape comes from this "
             "axial split, not from aliasing. The diagonal turns both halves and dips to -0.21."},
    {"title": "4. Aliasing",
     "settings": {"schedule": "rvt", "rows": 7, "cols": 7, "dim_head": 24, "max_freq_or_base": 28.0,
                  "scaling": "native"},
     "look": "At 28 px with 4 px patches the steps are 1.05, 3.77, 6.49, 9.22, 11.94 and 14.66 rad per patch; "
             "bands 1-5 exceed π. The model only sees the wrapped step: band 2's 6.49 rad looks like 0.21 rad, "
             "so neighbours look almost identical in that band, and a patch several steps away can look like a "
             "neighbour. The kernel does not decay with distance."},
    {"title": "5. Resolution: RvT interpolates",
     "settings": {"schedule": "rvt", "rows": 14, "cols": 14, "dim_head": 24, "max_freq_or_base": 28.0,
                  "train_rows": 7, "train_cols": 7, "scaling": "native"},
     "look": "RvT's positions always run from -1 to 1, so at 14 patches every step shrinks by 6/13 (black "
             "ticks: the training grid): only 3 of 6 bands alias now, and the wrapped steps the model sees "
             "(0.48, 1.74, 3.0, 2.03, 0.77, 0.48) are not the ones it was trained on (1.05, 2.51, 0.21, ...)."},
    {"title": "6. Resolution: RoPE extrapolates",
     "settings": {"schedule": "rope", "rows": 28, "cols": 28, "dim_head": 64, "max_freq_or_base": 100.0,
                  "train_rows": 14, "train_cols": 14, "scaling": "native"},
     "look": "Integer positions keep every step, so nothing changes locally, but the slow bands now reach "
             "angles they never reached in training. Switch scaling to pi (all steps halve, like RvT), ntk "
             "(fast bands kept, the slowest halved) or yarn (a ramp per band) and watch the steps move."},
]

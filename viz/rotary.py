"""What RvT's 2-D axial rotary embedding is, shown on the patch grid of a loaded model.

Angles are `position * scale * pi` with positions in [-1, 1] along rows and columns. Between
neighbouring patches a band turns by `2 / (n - 1) * scale * pi`. Above pi (Nyquist) the band aliases:
only the wrapped step, at most pi, can be seen, so neighbouring patches look closer than they are
(at 28/4, band 2 turns 6.49 rad per patch, which looks like 0.21 rad) and patches far apart can look
like neighbours. The rotary lab (rvt.rotary_lab, viz.rotary_lab) covers other schedules and grids.

`kernel_image` is the Rotary tab's kernel, drawn with Pillow (a few milliseconds); the tab's phase and
step pictures are the lab's (`viz.rotary_lab`). The matplotlib figures (`bands_figure`, `nyquist_figure`,
`kernel_figure`) are for the export's print-quality SVGs: a fixed layout (no constrained-layout solve).
"""
from __future__ import annotations

import textwrap
from math import pi

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image

from rvt.grid import tokens_to_grid
from rvt.rotary_lab import wrap

from .sheet import WIDTH, Sheet

UNWRAPPED, ALIASED, WRAPPED = "#9ecae1", "#ef8a62", "#2166ac"


def phase_steps(scales: torch.Tensor, n: int) -> torch.Tensor:
    """(bands,) angle between neighbouring patches along an axis of n patches, in radians (unwrapped)."""
    return scales.float() * pi * (2.0 / (n - 1)) if n > 1 else torch.zeros_like(scales.float())


def aliasing_bands(scales: torch.Tensor, grid: tuple[int, int]) -> dict[str, list[int]]:
    """Indices of bands whose per-patch step exceeds pi, along rows and along columns."""
    return {axis: torch.nonzero(phase_steps(scales, n) > pi).flatten().tolist()
            for axis, n in (("rows", grid[0]), ("columns", grid[1]))}


def pair_angles(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """(N, pairs) rotation angle of every rotated pair at every patch, from the model's tables."""
    return torch.atan2(sin[:, ::2], cos[:, ::2])


def rotary_kernel(sin: torch.Tensor, cos: torch.Tensor, query: int) -> torch.Tensor:
    """(N,) idealised rotary kernel: q_rot . k_rot between patch `query` and every patch when q and k
    are the same unit vector spread evenly over the rotated pairs, i.e. the mean over pairs of
    cos(angle_q - angle_k); 1 at zero offset. Real heads' q and k differ from this (see kernel_figure).
    """
    s, c = sin[:, ::2], cos[:, ::2]  # (N, pairs): each pair shares one angle
    return (c[query] * c + s[query] * s).mean(-1)


def _figure(width: float, height: float, left=0.02, right=0.98, bottom=0.08, top=0.82, wspace=0.25) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    fig.subplots_adjust(left=left, right=right, bottom=bottom, top=top, wspace=wspace)
    return fig


def bands_figure(sin: torch.Tensor, cos: torch.Tensor, grid: tuple[int, int], max_bands: int = 8) -> Figure:
    """cos(angle) of each band over the grid: row bands (top strip) and column bands (bottom strip)."""
    angles = pair_angles(sin, cos)  # (N, 2 * bands): row bands then column bands
    bands = angles.shape[-1] // 2
    shown = np.unique(np.linspace(0, bands - 1, min(bands, max_bands)).round().astype(int))
    h, w = grid
    gap = max(1, round(max(h, w) * 0.25))
    mosaic = np.full((2 * h + gap, len(shown) * (w + gap) - gap), np.nan)
    for col, band in enumerate(shown):
        for row, offset in enumerate((0, bands)):
            tile = tokens_to_grid(angles[:, offset + band].cos(), grid).numpy()
            mosaic[row * (h + gap): row * (h + gap) + h, col * (w + gap): col * (w + gap) + w] = tile
    fig = _figure(1.25 * len(shown) + 1.0, 3.2, left=0.09, right=0.97, bottom=0.04, top=0.80)
    ax = fig.add_subplot()
    ax.imshow(np.ma.masked_invalid(mosaic), cmap="RdBu_r", vmin=-1, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    for col, band in enumerate(shown):
        ax.text(col * (w + gap) + (w - 1) / 2, -0.8, f"band {band}", ha="center", va="bottom", fontsize=8)
    for row, name in enumerate(("rows", "cols")):
        ax.text(-0.8, row * (h + gap) + (h - 1) / 2, name, ha="right", va="center", fontsize=8, rotation=90)
    fig.suptitle("cos(rotation angle) per frequency band over the patch grid", fontsize=10)
    return fig


def nyquist_figure(scales: torch.Tensor, grid: tuple[int, int], train_grid: tuple[int, int] | None = None) -> Figure:
    """Per band: the unwrapped step per patch (light, orange above pi) beside the wrapped step the model
    can see (dark), pi dashed, and (black ticks) the unwrapped step at the training grid; row bands on
    the left, column bands on the right of one axes (ticks are most of a matplotlib draw's cost)."""
    bands = scales.numel()
    fig = _figure(9, 3.4, left=0.07, right=0.99, bottom=0.1, top=0.76)
    ax = fig.add_subplot()
    top = pi
    for group, (axis, n, n_train) in enumerate((("rows", grid[0], train_grid and train_grid[0]),
                                                 ("columns", grid[1], train_grid and train_grid[1]))):
        x = np.arange(bands) + group * (bands + 1)
        steps = phase_steps(scales, n).double()
        aliased = (steps > pi).numpy()
        ax.bar(x - 0.2, steps.numpy(), width=0.4, color=np.where(aliased, ALIASED, UNWRAPPED))
        ax.bar(x + 0.2, wrap(steps).numpy(), width=0.4, color=WRAPPED)
        top = max(top, float(steps.max()))
        if n_train and n_train != n:
            train_steps = phase_steps(scales, n_train).numpy()
            top = max(top, float(train_steps.max()))
            ax.scatter(x - 0.2, train_steps, marker="_", s=120, color="black", zorder=3)
        for i in range(0, bands, -(-bands // 8)):
            ax.text(x[i], 0, str(i), ha="center", va="top", fontsize=7)
        ax.text(x.mean(), -0.09, f"{axis}: {n} patches, {int(aliased.sum())} of {bands} bands alias",
                transform=ax.get_xaxis_transform(), ha="center", va="top", fontsize=9)
    ax.axhline(pi, color="black", linestyle="--", linewidth=1)
    ax.text(2 * bands + 0.5, pi, "π", va="bottom", ha="right", fontsize=9)
    ax.set_xlim(-0.7, 2 * bands + 0.7)
    ax.set_ylim(0, top * 1.08)
    multiple = max(1, int(top / pi) // 5)
    ax.set_yticks(np.arange(0, top + 1e-9, multiple * pi),
                  ["0"] + [f"{i}π" if i > 1 else "π" for i in range(multiple, int(top / pi) + 1, multiple)])
    ax.set_xticks([])
    ax.tick_params(labelsize=7)
    ax.set_ylabel("rad between neighbours", fontsize=8)
    # A key as coloured words: a matplotlib legend costs as much as the rest of the figure.
    key = [("unwrapped step", UNWRAPPED), ("unwrapped, above π", ALIASED), ("wrapped step (what is seen)", WRAPPED)]
    if train_grid and tuple(train_grid) != tuple(grid):
        key.append((f"— unwrapped at the training grid {train_grid[0]}x{train_grid[1]}", "black"))
    for i, (words, colour) in enumerate(key):
        ax.text(0.01 + 0.24 * (i % 2), 0.97 - 0.08 * (i // 2), "■ " + words if colour != "black" else words,
                color=colour, transform=ax.transAxes, va="top", fontsize=7)
    fig.suptitle("Above π a band aliases: the model sees the wrapped step (at most π), so neighbours look closer "
                 "than they are\nand far patches can look like neighbours", fontsize=9)
    return fig


def query_kernels(sin: torch.Tensor, cos: torch.Tensor, grid: tuple[int, int], query: tuple[int, int],
                  qk: dict[str, torch.Tensor] | None = None) -> list[tuple[str, torch.Tensor, str, bool]]:
    """The kernel panels for a query patch (row, col): (title, (h, w) values, colormap, symmetric scale).

    First the idealised rotary kernel (q = k spread evenly over the pairs); with `qk` (one head's q, k,
    q_rot, k_rot, each (N, d) incl. CLS) the real scores q.k/sqrt(d) without and with rotation, and
    their difference.
    """
    index = query[0] * grid[1] + query[1]
    panels = [("idealised: q = k spread evenly\nover pairs, mean cos(angle diff.)",
               tokens_to_grid(rotary_kernel(sin, cos, index), grid), "RdBu_r", True)]
    if qk is not None:
        scale = qk["q"].shape[-1] ** -0.5
        plain = (qk["k"][1:] @ qk["q"][1 + index]) * scale
        rotated = (qk["k_rot"][1:] @ qk["q_rot"][1 + index]) * scale
        panels += [("this head: q.k/√d\nwithout rotation", tokens_to_grid(plain, grid), "viridis", False),
                   ("this head: q.k/√d\nwith rotation (used)", tokens_to_grid(rotated, grid), "viridis", False),
                   ("change due to rotary\n(with - without)", tokens_to_grid(rotated - plain, grid), "RdBu_r", True)]
    return panels


def _limits(values: np.ndarray, symmetric: bool) -> tuple[float, float]:
    if symmetric:
        limit = float(np.abs(values).max()) or 1.0
        return -limit, limit
    lo, hi = float(values.min()), float(values.max())
    return lo, hi if hi > lo else lo + 1.0


def kernel_image(sin: torch.Tensor, cos: torch.Tensor, grid: tuple[int, int], query: tuple[int, int],
                 qk: dict[str, torch.Tensor] | None = None, title: str = "") -> Image.Image:
    """`query_kernels` drawn with Pillow: one heat map per panel with its colour bar, the query patch
    outlined in green."""
    panels = query_kernels(sin, cos, grid, query, qk)
    h, w = grid
    column = (WIDTH - 20) // len(panels)
    side = min(220, column - 50)  # room for the colour bar and its labels
    ph, pw = (side, max(8, round(side * w / h))) if h >= w else (max(8, round(side * h / w)), side)
    chars = max(12, (column - 10) // 7)  # an 11 px DejaVu character is 6-7 px wide
    lines = max(len(textwrap.wrap(name.replace("\n", " "), chars)) for name, *_ in panels)
    top = 30 + 15 * lines
    sheet = Sheet(top + ph + 30)
    sheet.text((10, 6), title or f"query patch (row {query[0]}, col {query[1]})", 13)
    cell_h, cell_w = ph / h, pw / w
    for i, (name, values, cmap, symmetric) in enumerate(panels):
        x, values = 10 + i * column, values.numpy()
        sheet.paragraph((x, 28), name.replace("\n", " "), chars, 11)
        lo, hi = _limits(values, symmetric)
        sheet.heat((x, top, pw, ph), values, cmap, lo, hi)
        qx, qy = x + query[1] * cell_w, top + query[0] * cell_h
        sheet.draw.rectangle([qx, qy, qx + max(cell_w, 3) - 1, qy + max(cell_h, 3) - 1], outline=(0, 220, 0), width=2)
        sheet.colorbar((x + pw + 4, top, 8, ph), cmap, lo, hi)
    sheet.text((10, top + ph + 8), "green: the query patch; each map: that query against every patch (key) of the "
               "grid", 10)
    return sheet.image


def kernel_figure(sin: torch.Tensor, cos: torch.Tensor, grid: tuple[int, int], query: tuple[int, int],
                  qk: dict[str, torch.Tensor] | None = None, title: str = "") -> Figure:
    """`query_kernels` as a matplotlib figure, for print-quality export."""
    panels = query_kernels(sin, cos, grid, query, qk)
    fig = _figure(3.0 * len(panels), 3.3, left=0.02, right=0.96, bottom=0.04, top=0.74, wspace=0.35)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, values, cmap, symmetric) in zip(axes, panels):
        values = values.numpy()
        lo, hi = _limits(values, symmetric)
        im = ax.imshow(values, cmap=cmap, interpolation="nearest", vmin=lo, vmax=hi)
        ax.scatter([query[1]], [query[0]], marker="s", facecolors="none", edgecolors="lime", s=90, linewidths=2)
        ax.set_title(name, fontsize=8, y=1.0)
        ax.set_xticks([])
        ax.set_yticks([])
        bar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.03)
        bar.set_ticks(np.linspace(lo, hi, 3))
        bar.ax.tick_params(labelsize=7)
    fig.suptitle(title or f"query patch (row {query[0]}, col {query[1]})", fontsize=10)
    return fig

"""Attention panels: per-head maps for a layer, one query's attention row, the whole model."""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

from rvt.grid import tokens_to_grid

from .render import colorize, new_figure, overlay


def token_index(row: int, col: int, grid: tuple[int, int]) -> int:
    """Patch (row, col) -> its token index (CLS is token 0)."""
    h, w = grid
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"patch ({row}, {col}) is outside the {h}x{w} grid")
    return 1 + row * w + col


def query_maps(attention: torch.Tensor, layer: int, grid: tuple[int, int], query: int = 0,
               batch: int = 0) -> np.ndarray:
    """(H, h, w): how much token `query` (0 = CLS) attends to each patch, per head.

    attention: (L, B, H, Q, N) from a capture (Q = 1 when only the CLS row was kept).
    """
    if query >= attention.shape[-2]:
        raise ValueError(f"query token {query} was not captured (only {attention.shape[-2]} rows kept)")
    return tokens_to_grid(attention[layer, batch, :, query, 1:], grid).float().numpy()


def heads_figure(image: np.ndarray, maps: np.ndarray, title: str, shared_scale: bool = True,
                 cmap: str = "inferno", alpha: float = 0.6, mark: tuple[int, int] | None = None,
                 grid: tuple[int, int] | None = None, silenced: list[int] | None = None) -> Figure:
    """Every head's map overlaid on the image, labelled, with a colorbar (shared or per head)."""
    heads = maps.shape[0]
    cols = min(heads, 4)
    rows = math.ceil(heads / cols)
    fig = new_figure(2.2 * cols + 0.8, 2.3 * rows + 0.4)
    axes = np.atleast_1d(fig.subplots(rows, cols, squeeze=False)).ravel()
    lo, hi = float(maps.min()), float(maps.max())
    for head, ax in enumerate(axes):
        ax.set_axis_off()
        if head >= heads:
            continue
        vmin, vmax = (lo, hi) if shared_scale else (float(maps[head].min()), float(maps[head].max()))
        ax.imshow(overlay(image, maps[head], cmap, alpha, vmin, vmax), interpolation="nearest")
        label = f"head {head}" + ("" if shared_scale else f"  max {vmax:.2f}")
        if silenced and head in silenced:
            label += " (off)"
        ax.set_title(label, fontsize=9)
        if mark is not None and grid is not None:
            sy, sx = image.shape[0] / grid[0], image.shape[1] / grid[1]
            ax.add_patch(_square(mark, sy, sx))
    if shared_scale:
        fig.colorbar(ScalarMappable(Normalize(lo, hi), cmap), ax=list(axes), shrink=0.8, label="attention")
    fig.suptitle(title, fontsize=10)
    return fig


def _square(mark: tuple[int, int], sy: float, sx: float):
    from matplotlib.patches import Rectangle
    return Rectangle((mark[1] * sx - 0.5, mark[0] * sy - 0.5), sx, sy, fill=False, edgecolor="cyan", linewidth=2)


def model_view(attention: torch.Tensor, grid: tuple[int, int], layers: list[int] | None = None,
               batch: int = 0, cmap: str = "inferno") -> Figure:
    """Layers x heads thumbnails of the CLS attention, each map scaled to its own range."""
    n_layers, _, heads = attention.shape[:3]
    h, w = grid
    pad = 1
    mosaic = np.full((n_layers * (h + pad), heads * (w + pad), 3), 255, dtype=np.uint8)
    for layer in range(n_layers):
        maps = query_maps(attention, layer, grid, 0, batch)
        for head in range(heads):
            y, x = layer * (h + pad), head * (w + pad)
            mosaic[y:y + h, x:x + w] = colorize(maps[head], cmap)
    fig = new_figure(max(4.5, 1.0 + 0.7 * heads * max(1.0, w / 7)), 1.0 + 0.7 * n_layers * max(1.0, h / 7))
    ax = fig.add_subplot()
    ax.imshow(mosaic, interpolation="nearest")
    ax.set_xticks([x * (w + pad) + w / 2 - 0.5 for x in range(heads)], [str(i) for i in range(heads)])
    names = layers if layers is not None else range(n_layers)
    ax.set_yticks([y * (h + pad) + h / 2 - 0.5 for y in range(n_layers)], [str(i) for i in names])
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("CLS attention, all layers x heads\n(each map on its own scale)", fontsize=9)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return fig

"""Attention panels: per-head maps for a layer, one query's attention row, the whole model."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from rvt.grid import tokens_to_grid

from .mosaic import colorbar, mark_patch, tile_grid
from .render import colorize, enlarge, overlay


def token_index(row: int, col: int, grid: tuple[int, int]) -> int:
    """Patch (row, col) -> its token index (CLS is token 0)."""
    h, w = grid
    if not (0 <= row < h and 0 <= col < w):
        raise ValueError(f"patch ({row}, {col}) is outside the {h}x{w} grid")
    return 1 + row * w + col


def query_maps(attention: torch.Tensor | Sequence[torch.Tensor], layer: int, grid: tuple[int, int],
               query: int = 0, batch: int = 0) -> np.ndarray:
    """(H, h, w): how much token `query` (0 = CLS) attends to each patch, per head.

    attention: (L, B, H, Q, N) from a capture, or `trace.attention_layers` (a list of (B, H, Q, N),
    which reads one row without stacking anything); Q = 1 when only the CLS row was kept.
    """
    maps = attention[layer]
    if query >= maps.shape[-2]:
        raise ValueError(f"query token {query} was not captured (only {maps.shape[-2]} rows kept)")
    return tokens_to_grid(maps[batch, :, query, 1:], grid).float().numpy()


def heads_image(image: np.ndarray, maps: np.ndarray, title: str, shared_scale: bool = True,
                cmap: str = "inferno", alpha: float = 0.6, mark: tuple[int, int] | None = None,
                grid: tuple[int, int] | None = None, silenced: list[int] | None = None,
                tile: int = 168) -> Image.Image:
    """Every head's map overlaid on the image, labelled, with a shared colorbar or per-head maxima."""
    lo, hi = float(maps.min()), float(maps.max())
    tiles, labels = [], []
    for head, values in enumerate(maps):
        vmin, vmax = (lo, hi) if shared_scale else (float(values.min()), float(values.max()))
        shown = enlarge(overlay(image, values, cmap, alpha, vmin, vmax), tile)
        if mark is not None and grid is not None:
            shown = mark_patch(shown, mark, grid)
        tiles.append(shown)
        label = f"head {head}" + ("" if shared_scale else f" (max {vmax:.2f})")
        labels.append(label + (" off" if silenced and head in silenced else ""))
    bar = colorbar(cmap, lo, hi, tiles[0].shape[0]) if shared_scale else None
    return tile_grid(tiles, cols=min(len(tiles), 4), title=title, labels=labels, bar=bar)


def model_view(attention: torch.Tensor | Sequence[torch.Tensor], grid: tuple[int, int],
               layers: list[int] | None = None, batch: int = 0, cmap: str = "inferno", tile: int = 64) -> Image.Image:
    """Layers x heads thumbnails of the CLS attention, each map scaled to its own range."""
    n_layers, heads = len(attention), attention[0].shape[1]
    tiles = [enlarge(colorize(query_maps(attention, layer, grid, 0, batch)[head], cmap), tile)
             for layer in range(n_layers) for head in range(heads)]
    names = layers if layers is not None else range(n_layers)
    return tile_grid(tiles, cols=heads, title="CLS attention per layer (rows) and head",
                     row_labels=[f"L{i}" for i in names], col_labels=[f"H{i}" for i in range(heads)], pad=3)

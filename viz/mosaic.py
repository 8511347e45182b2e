"""Labelled tile grids drawn with Pillow: the fast path for panels shown on every interaction.

A matplotlib figure costs 50-300 ms to draw; these mosaics of colormapped numpy tiles with text
from Pillow's bundled font cost a few milliseconds, so switching a layer or head stays instant.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .render import lut

BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)


@lru_cache(maxsize=8)
def font(size: int = 13) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def colorbar(cmap: str, lo: float, hi: float, height: int, label: str = "") -> Image.Image:
    """A vertical colour strip (high at the top) with its range written beside it."""
    strip = lut(cmap)[np.linspace(255, 0, height).round().astype(int)][:, None].repeat(14, axis=1)
    bar = Image.new("RGB", (80, height + 20), BACKGROUND)
    bar.paste(Image.fromarray(strip), (4, 10))
    draw = ImageDraw.Draw(bar)
    draw.text((22, 4), f"{hi:.3g}", fill=INK, font=font(11))
    draw.text((22, height + 4), f"{lo:.3g}", fill=INK, font=font(11))
    if label:
        draw.text((22, height // 2 + 4), label, fill=INK, font=font(11))
    return bar


def tile_grid(tiles: list[np.ndarray], cols: int, title: str = "", labels: list[str] | None = None,
              row_labels: list[str] | None = None, col_labels: list[str] | None = None,
              bar: Image.Image | None = None, pad: int = 6) -> Image.Image:
    """Tiles (all (h, w, 3) uint8, same size) in a grid with optional per-tile, row and column labels."""
    th, tw = tiles[0].shape[:2]
    rows = -(-len(tiles) // cols)
    top = 24 if title else 4
    label_h = 18 if labels else 0
    head_h = 18 if col_labels else 0
    left = 34 if row_labels else 0
    width = left + cols * (tw + pad) + pad + (bar.width if bar else 0)
    width = max(width, int(font(14).getlength(title)) + 2 * pad)
    height = top + head_h + rows * (th + label_h + pad) + pad
    if bar:
        height = max(height, top + head_h + label_h + bar.height)
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((pad, 5), title, fill=INK, font=font(14))
    for c, text in enumerate(col_labels or []):
        draw.text((left + pad + c * (tw + pad) + tw // 2, top + 2), text, fill=INK, font=font(12), anchor="mt")
    for r, text in enumerate(row_labels or []):
        y = top + head_h + r * (th + label_h + pad) + label_h + th // 2
        draw.text((left - 4, y), text, fill=INK, font=font(12), anchor="rm")
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        x = left + pad + c * (tw + pad)
        y = top + head_h + r * (th + label_h + pad)
        if labels:
            draw.text((x + tw // 2, y + 2), labels[i], fill=INK, font=font(12), anchor="mt")
        canvas.paste(Image.fromarray(tile), (x, y + label_h))
    if bar:
        canvas.paste(bar, (width - bar.width, top + head_h + label_h))
    return canvas


def mark_patch(tile: np.ndarray, patch: tuple[int, int], grid: tuple[int, int], colour=(0, 255, 255)) -> np.ndarray:
    """Outline patch (row, col) of a grid drawn over the whole tile."""
    image = Image.fromarray(tile)
    sy, sx = tile.shape[0] / grid[0], tile.shape[1] / grid[1]
    y0, x0 = patch[0] * sy, patch[1] * sx
    ImageDraw.Draw(image).rectangle([x0, y0, x0 + sx - 1, y0 + sy - 1], outline=colour, width=2)
    return np.asarray(image)

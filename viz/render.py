"""Rendering primitives: colormap lookup tables, overlays in numpy, figures to images."""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image


@lru_cache(maxsize=32)
def lut(cmap: str, n: int = 256) -> np.ndarray:
    """(n, 3) uint8 colour table of a matplotlib colormap."""
    return (colormaps[cmap](np.linspace(0.0, 1.0, n))[:, :3] * 255).round().astype(np.uint8)


def colorize(values: np.ndarray, cmap: str = "inferno", vmin: float | None = None,
             vmax: float | None = None) -> np.ndarray:
    """(h, w) floats -> (h, w, 3) uint8 through a colormap lookup table."""
    values = np.asarray(values, dtype=np.float32)
    lo = float(values.min()) if vmin is None else vmin
    hi = float(values.max()) if vmax is None else vmax
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    return lut(cmap)[(np.clip(scaled, 0, 1) * 255).round().astype(np.intp)]


def upsample(values: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a patch map (h, w, ...) to pixels (H, W, ...): one block per patch."""
    h, w = values.shape[:2]
    rows = np.arange(size[0]) * h // size[0]
    cols = np.arange(size[1]) * w // size[1]
    return values[rows][:, cols]


def overlay(image: np.ndarray, heat: np.ndarray, cmap: str = "inferno", alpha: float = 0.6,
            vmin: float | None = None, vmax: float | None = None) -> np.ndarray:
    """Blend a colorized (h, w) map, upsampled to the image, over an (H, W, 3) uint8 image."""
    colour = upsample(colorize(heat, cmap, vmin, vmax), image.shape[:2]).astype(np.float32)
    return (image.astype(np.float32) * (1 - alpha) + colour * alpha).round().astype(np.uint8)


def enlarge(image: np.ndarray, min_side: int = 224) -> np.ndarray:
    """Nearest-neighbour enlargement by an integer factor so small inputs are visible in a page."""
    factor = max(1, -(-min_side // min(image.shape[:2])))
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def figure_to_image(fig: Figure) -> Image.Image:
    """Render an object-API Figure to a PIL image (no pyplot state is involved)."""
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3].copy())


def new_figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=100, layout="constrained")

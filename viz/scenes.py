"""Pictures for the scene editor: a scene with its key objects outlined, a relevance map over it, and
the per-head object mass as a labelled heat map."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .mosaic import tile_grid
from .render import enlarge, overlay

OUTLINES = {"red": (255, 150, 150), "blue": (150, 190, 255)}  # light, so the outline shows on the object's edge
SHOWN_SIDE = 256  # px of the shorter side as shown: scenes are 32 px natively


def _edge(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool -> the mask's boundary pixels (inside the mask, with a 4-neighbour outside it)."""
    padded = np.pad(mask, 1)
    interior = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~interior


def _outlined(shown: np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Draw the key objects' outlines on an enlarged image (masks upsampled by the same factor)."""
    out = shown.copy()
    factor = shown.shape[0] // next(iter(masks.values())).shape[0]
    for name, colour in OUTLINES.items():
        if name in masks:
            big = masks[name].repeat(factor, 0).repeat(factor, 1)
            out[_edge(big)] = colour
    return out


def scene_image(image: np.ndarray, masks: dict[str, np.ndarray], show_masks: bool = False) -> Image.Image:
    """The scene enlarged for the page, the red and blue objects' masks outlined when asked."""
    shown = enlarge(image, SHOWN_SIDE)
    return Image.fromarray(_outlined(shown, masks) if show_masks else shown)


def relevance_image(image: np.ndarray, relevance: np.ndarray, masks: dict[str, np.ndarray],
                    show_masks: bool = True) -> Image.Image:
    """A 2-D relevance map (patch grid or pixels; negative values count as 0, as in the mass score)
    over the scene, with the key objects outlined."""
    shown = enlarge(overlay(image, np.clip(relevance, 0, None)), SHOWN_SIDE)
    return Image.fromarray(_outlined(shown, masks) if show_masks else shown)


def head_mass_image(mass: np.ndarray, uniform: float, title: str) -> Image.Image:
    """(L, H) attention mass on the key objects, one tile per head (rows: layers), brighter for more
    mass; each tile is labelled with its value."""
    top = float(mass.max()) or 1.0
    tile = np.zeros((40, 56, 3), np.uint8)
    tiles = [overlay(tile, np.full((1, 1), value / top), alpha=1.0, vmin=0.0, vmax=1.0) for value in mass.ravel()]
    return tile_grid(tiles, mass.shape[1], title=f"{title} (uniform attention: {uniform:.3f})",
                     labels=[f"{value:.3f}" for value in mass.ravel()],
                     row_labels=[f"L{layer}" for layer in range(mass.shape[0])],
                     col_labels=[f"head {head}" for head in range(mass.shape[1])])

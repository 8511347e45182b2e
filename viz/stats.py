"""Head statistics: mean attention distance (ViT paper, Fig. 7), entropy, share of attention on CLS.

The numbers come from `rvt.capture.head_statistics`, one layer at a time: `analyze` records them
during its pass (`trace.head_stats`), and `head_stats_of` computes them from stored attention for
anything else. Two drawings: `stats_image` (Pillow, a few ms, what the explorer shows) and
`stats_figure` (matplotlib, for print-quality export as SVG/PDF or at high DPI).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from rvt.capture import STATISTICS, head_statistics, patch_distances, token_distances

from .mosaic import BACKGROUND, INK, colorbar, font
from .render import colorize, new_figure

__all__ = ["attention_entropy", "cls_share", "head_stats", "head_stats_of", "mean_attention_distance",
           "patch_distances", "stats_figure", "stats_image"]

# Distinct, colour-blind-safe head colours (Okabe-Ito), cycled beyond eight heads.
HEAD_COLOURS = ["#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000"]


def head_stats_of(attention: torch.Tensor | Sequence[torch.Tensor], grid: tuple[int, int],
                  patch_size: int) -> dict[str, torch.Tensor]:
    """{statistic: (L, H)} from attention (L, B, H, N, N) or a list of per-layer (B, H, N, N), layer by layer."""
    if len(attention) == 0 or attention[0].dim() != 4 or attention[0].shape[-1] != attention[0].shape[-2]:
        raise ValueError("head statistics need full attention per layer (B, H, N, N); cls_only captures lack it")
    distances = token_distances(grid, patch_size)
    per_layer = []
    for layer in attention:  # one head at a time: float copies and logarithms of one (B, N, N) map
        heads = [head_statistics(layer[:, h:h + 1], distances) for h in range(layer.shape[1])]
        per_layer.append({name: torch.cat([s[name] for s in heads], dim=1).mean(0) for name in STATISTICS})
    return {name: torch.stack([s[name] for s in per_layer]) for name in STATISTICS}


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(L, H) pixels: patch queries' attention-weighted distance to patch keys (CLS left out, renormalised)."""
    return head_stats_of(attention, grid, patch_size)["mean_distance_px"]


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """(L, H) nats: entropy of each query's attention row, averaged over queries and batch."""
    return head_stats_of(attention, (1, attention[0].shape[-1] - 1), 1)["entropy_nats"]


def cls_share(attention: torch.Tensor) -> torch.Tensor:
    """(L, H): fraction of patch queries' attention that goes to the CLS token."""
    return head_stats_of(attention, (1, attention[0].shape[-1] - 1), 1)["cls_share"]


def head_stats(attention: torch.Tensor, grid: tuple[int, int], patch_size: int) -> dict[str, list[list[float]]]:
    """JSON-ready {statistic: [[per head] per layer]}."""
    return {name: values.tolist() for name, values in head_stats_of(attention, grid, patch_size).items()}


def uniform_distance(grid: tuple[int, int], patch_size: int) -> float:
    """Mean attention distance of a head that attends evenly to every patch: the chance level."""
    return float(patch_distances(grid, patch_size).mean())


def _as_numpy(stats: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return tuple(np.asarray(stats[name], dtype=np.float64) for name in STATISTICS)


# --- Pillow drawing: fixed layout, no layout solver --------------------------------------------------------

def _scatter(distance: np.ndarray, uniform: float, size: tuple[int, int]) -> Image.Image:
    """Mean distance per layer (x) and head (colour) on plain axes, with the uniform level dashed."""
    width, height = size
    left, right, top, bottom = 52, 10, 46, 40
    panel = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(panel)
    layers, heads = distance.shape
    lo, hi = min(float(distance.min()), uniform), max(float(distance.max()), uniform)
    pad = 0.15 * (hi - lo) or 1.0
    lo, hi = max(0.0, lo - pad), hi + pad
    x_of = lambda layer: left + (layer + 0.5) * (width - left - right) / layers  # noqa: E731
    y_of = lambda value: top + (hi - value) / (hi - lo) * (height - top - bottom)  # noqa: E731
    draw.text((left, 4), "How far each head looks (px)", fill=INK, font=font(13))
    for head in range(heads):
        x = left + head * 44
        draw.ellipse([x, 26, x + 8, 34], fill=HEAD_COLOURS[head % len(HEAD_COLOURS)])
        draw.text((x + 11, 30), f"H{head}", fill=INK, font=font(11), anchor="lm")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=INK)
    for tick in np.linspace(lo, hi, 5):
        y = y_of(tick)
        draw.line([(left - 4, y), (left, y)], fill=INK)
        draw.text((left - 6, y), f"{tick:.1f}", fill=INK, font=font(11), anchor="rm")
    for layer in range(layers):
        draw.text((x_of(layer), height - bottom + 4), str(layer), fill=INK, font=font(11), anchor="mt")
    draw.text(((left + width - right) / 2, height - 16), "layer", fill=INK, font=font(12), anchor="mt")
    y = y_of(uniform)
    for x in range(left, width - right, 8):
        draw.line([(x, y), (min(x + 4, width - right), y)], fill=(120, 120, 120))
    draw.text((width - right, height - bottom - 2), f"dashed: uniform attention ({uniform:.1f} px)",
              fill=(100, 100, 100), font=font(11), anchor="rb")
    spread = min(18.0, (width - left - right) / layers / (heads + 1))
    for head in range(heads):
        colour = HEAD_COLOURS[head % len(HEAD_COLOURS)]
        for layer in range(layers):
            x, y = x_of(layer) + (head - (heads - 1) / 2) * spread, y_of(distance[layer, head])
            draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=colour)
    return panel


def _heatmap(values: np.ndarray, title: str, cmap: str, lo: float, hi: float, cell: int) -> Image.Image:
    """Layers (rows) x heads (columns), each cell coloured and labelled with its value."""
    layers, heads = values.shape
    left, top = 30, 44
    colours = colorize(values, cmap, lo, hi).repeat(cell, axis=0).repeat(cell, axis=1)
    bar = colorbar(cmap, lo, hi, layers * cell)
    panel = Image.new("RGB", (left + heads * cell + bar.width + 6, top + layers * cell + 8), BACKGROUND)
    panel.paste(Image.fromarray(colours), (left, top))
    panel.paste(bar, (left + heads * cell + 4, top - 10))
    draw = ImageDraw.Draw(panel)
    draw.text((4, 4), title, fill=INK, font=font(13))
    for head in range(heads):
        draw.text((left + head * cell + cell / 2, top - 3), f"H{head}", fill=INK, font=font(11), anchor="mb")
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    for layer in range(layers):
        draw.text((left - 4, top + layer * cell + cell / 2), f"L{layer}", fill=INK, font=font(11), anchor="rm")
        for head in range(heads):
            ink = (0, 0, 0) if scaled[layer, head] > 0.6 else (255, 255, 255)
            draw.text((left + head * cell + cell / 2, top + layer * cell + cell / 2), f"{values[layer, head]:.2f}",
                      fill=ink, font=font(11), anchor="mm")
    return panel


def _ceil_1sf(value: float) -> float:
    """value rounded up to one significant digit (0.023 -> 0.03), at most 1 and at least 0.01."""
    value = min(1.0, max(0.01, float(value)))
    step = 10 ** np.floor(np.log10(value))
    return float(min(1.0, np.ceil(round(value / step, 6)) * step))


def stats_image(stats: dict, grid: tuple[int, int], patch_size: int) -> Image.Image:
    """The head statistics as one Pillow image: distance scatter, entropy and CLS-share heatmaps."""
    distance, entropy, share = _as_numpy(stats)
    layers, heads = distance.shape
    cell = max(34, min(56, 300 // max(layers, heads)))
    max_entropy = float(np.log(grid[0] * grid[1] + 1))
    top_share = _ceil_1sf(share.max())  # shares are often a few %: a 0-1 scale would be all black
    maps = [_heatmap(entropy, f"Entropy (nats, max {max_entropy:.2f})", "viridis", 0.0, max_entropy, cell),
            _heatmap(share, f"Share on CLS (scale to {top_share:g})", "magma", 0.0, top_share, cell)]
    height = max(m.height for m in maps)
    scatter = _scatter(distance, uniform_distance(grid, patch_size), (max(360, 60 * layers), height))
    canvas = Image.new("RGB", (scatter.width + sum(m.width + 16 for m in maps), height), BACKGROUND)
    x = 0
    for part in (scatter, *maps):
        canvas.paste(part, (x, 0))
        x += part.width + 16
    return canvas


# --- matplotlib drawing: for export (vector or high DPI) ---------------------------------------------------

def stats_figure(stats: dict, grid: tuple[int, int], patch_size: int) -> Figure:
    """The same three views as `stats_image`, as a matplotlib Figure to save as SVG/PDF or at high DPI."""
    distance, entropy, share = _as_numpy(stats)
    layers, heads = distance.shape
    fig = new_figure(11, 3.4)
    ax_d, ax_e, ax_c = fig.subplots(1, 3)
    for head in range(heads):
        ax_d.scatter(np.arange(layers), distance[:, head], s=18, label=f"head {head}",
                     color=HEAD_COLOURS[head % len(HEAD_COLOURS)])
    ax_d.set_xlabel("layer")
    ax_d.set_ylabel("mean attention distance (px)")
    ax_d.set_xticks(range(layers))
    ax_d.set_title("How far each head looks", fontsize=10)
    ax_d.axhline(uniform_distance(grid, patch_size), color="grey", linestyle="--", linewidth=1,
                 label="uniform attention")
    ax_d.legend(fontsize=7, ncol=2)
    max_entropy = np.log(grid[0] * grid[1] + 1)
    for ax, values, title, cmap, hi in ((ax_e, entropy, f"Entropy (nats, max {max_entropy:.2f})", "viridis",
                                         max_entropy), (ax_c, share, "Share of attention on CLS", "magma", 1.0)):
        im = ax.imshow(values, cmap=cmap, aspect="auto", vmin=0, vmax=hi)
        for (layer, head), value in np.ndenumerate(values):
            ax.text(head, layer, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value / hi > 0.6 else "white")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)
    return fig

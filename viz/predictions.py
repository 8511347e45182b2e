"""The top-k prediction chart: `predictions_image` (Pillow, about a millisecond, what the explorer
shows) and `predictions_figure` (matplotlib, for print-quality export as SVG/PDF or at high DPI)."""
from __future__ import annotations

from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from .mosaic import BACKGROUND, INK, font
from .render import new_figure

BAR = "#4c72b0"


def predictions_image(top: list[tuple[str, float]], width: int = 500) -> Image.Image:
    """Horizontal bars of the top-k classes, best on top, probabilities printed beside each bar."""
    row, top_pad = 30, 8
    label_w = max(int(font(14).getlength(name)) for name, _ in top) + 14
    bar_w = width - label_w - 70
    image = Image.new("RGB", (width, top_pad * 2 + row * len(top) + 22), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for i, (name, p) in enumerate(top):
        y = top_pad + i * row
        draw.text((label_w - 8, y + row / 2), name, fill=INK, font=font(14), anchor="rm")
        draw.rectangle([label_w, y + 5, label_w + max(1, round(p * bar_w)), y + row - 5], fill=BAR)
        draw.text((label_w + p * bar_w + 6, y + row / 2), f"{p:.1%}", fill=INK, font=font(13), anchor="lm")
    axis_y = top_pad + row * len(top)
    draw.line([(label_w, top_pad), (label_w, axis_y), (label_w + bar_w, axis_y)], fill=INK)
    for tick in (0.0, 0.5, 1.0):
        x = label_w + tick * bar_w
        draw.line([(x, axis_y), (x, axis_y + 4)], fill=INK)
        draw.text((x, axis_y + 6), f"{tick:g}", fill=INK, font=font(11), anchor="mt")
    draw.text((label_w + bar_w + 8, axis_y + 6), "probability", fill=INK, font=font(11), anchor="lt")
    return image


def predictions_figure(top: list[tuple[str, float]]) -> Figure:
    """The same chart as a matplotlib Figure (for export)."""
    labels = [name for name, _ in top][::-1]
    probs = [p for _, p in top][::-1]
    fig = new_figure(5, 0.45 * len(top) + 0.8)
    ax = fig.add_subplot()
    bars = ax.barh(labels, probs, color=BAR)
    ax.bar_label(bars, [f"{p:.1%}" for p in probs], padding=3, fontsize=9)
    ax.set_xlim(0, 1.15)
    ax.set_xlabel("probability")
    ax.spines[["top", "right"]].set_visible(False)
    return fig

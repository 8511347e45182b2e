"""A small Pillow drawing kit for figures redrawn on every interaction: a sheet with text, heat maps,
colour bars and keys, and charts in data coordinates. Text uses DejaVu Sans (shipped with matplotlib),
which has pi and the other symbols Pillow's bundled font lacks. A sheet draws in a few milliseconds where
a matplotlib figure takes tens to hundreds; the matplotlib figures stay for print-quality export.
"""
from __future__ import annotations

import math
import textwrap
from functools import lru_cache
from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .mosaic import BACKGROUND, INK
from .render import colorize, lut

WIDTH = 700
GREY = (150, 150, 150)
LIGHT = (225, 225, 225)


@lru_cache(maxsize=16)
def font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return ImageFont.truetype(str(Path(matplotlib.get_data_path()) / "fonts/ttf" / name), size)


class Sheet:
    """A white canvas with text, heat maps and small charts."""

    def __init__(self, height: int, width: int = WIDTH):
        self.image = Image.new("RGB", (width, height), BACKGROUND)
        self.draw = ImageDraw.Draw(self.image)

    def text(self, xy, s: str, size: int = 12, anchor: str = "la", fill=INK, bold: bool = False) -> None:
        self.draw.text(xy, s, fill=fill, font=font(size, bold), anchor=anchor)

    def paragraph(self, xy, s: str, width_chars: int, size: int = 12, fill=INK) -> int:
        """Wrapped text from xy; returns the y below it."""
        x, y = xy
        for line in textwrap.wrap(s, width_chars):
            self.text((x, y), line, size, fill=fill)
            y += size + 4
        return y

    def heat(self, box, values: np.ndarray, cmap: str, vmin: float, vmax: float) -> None:
        """(h, w) values as nearest-neighbour blocks filling box (x, y, width, height)."""
        x, y, w, h = box
        tile = Image.fromarray(colorize(values, cmap, vmin, vmax)).resize((w, h), Image.Resampling.NEAREST)
        self.image.paste(tile, (x, y))
        self.draw.rectangle([x - 1, y - 1, x + w, y + h], outline=GREY)

    def colorbar(self, box, cmap: str, vmin: float, vmax: float, fmt: str = "{:.2g}") -> None:
        x, y, w, h = box
        strip = lut(cmap)[np.linspace(255, 0, h).round().astype(int)][:, None].repeat(w, axis=1)
        self.image.paste(Image.fromarray(np.ascontiguousarray(strip)), (x, y))
        self.text((x + w + 3, y), fmt.format(vmax), 10)
        self.text((x + w + 3, y + h), fmt.format(vmin), 10, anchor="lb")

    def key(self, xy, items) -> None:
        """A one-line key: a coloured square and its label per item."""
        x, y = xy
        for label, colour in items:
            self.draw.rectangle([x, y + 2, x + 10, y + 10], fill=colour)
            self.text((x + 14, y), label, 10)
            x += 26 + self.draw.textlength(label, font=font(10))


class Chart:
    """Axes in data coordinates over a pixel box of a sheet: frame, ticks, bars, lines, markers."""

    def __init__(self, sheet: Sheet, box, xlim, ylim, xticks=(), yticks=(), xlabel="", ylabel="", title=""):
        self.sheet, self.draw = sheet, sheet.draw
        self.x0, self.y0, self.w, self.h = box
        self.xlim, self.ylim = xlim, ylim
        self.draw.rectangle([self.x0, self.y0, self.x0 + self.w, self.y0 + self.h], outline=GREY)
        for value, label in xticks:
            px = self.px(value, ylim[0])[0]
            self.draw.line([px, self.y0 + self.h, px, self.y0 + self.h + 3], fill=GREY)
            sheet.text((px, self.y0 + self.h + 4), label, 10, anchor="ma")
        for value, label in yticks:
            py = self.px(xlim[0], value)[1]
            self.draw.line([self.x0 - 3, py, self.x0, py], fill=GREY)
            sheet.text((self.x0 - 5, py), label, 10, anchor="rm")
        if xlabel:
            sheet.text((self.x0 + self.w / 2, self.y0 + self.h + 18), xlabel, 11, anchor="ma")
        if ylabel:
            sheet.text((self.x0, self.y0 - 3), ylabel, 11, anchor="lb")
        if title:
            sheet.text((self.x0 + self.w / 2, self.y0 - 18 if ylabel else self.y0 - 4), title, 12, anchor="mb")

    def px(self, x: float, y: float) -> tuple[float, float]:
        (a, b), (c, d) = self.xlim, self.ylim
        return (self.x0 + (x - a) / (b - a) * self.w, self.y0 + self.h - (min(max(y, c), d) - c) / (d - c) * self.h)

    def bar(self, x: float, width: float, y: float, fill) -> None:
        left, top = self.px(x - width / 2, y)
        right, bottom = self.px(x + width / 2, self.ylim[0])
        if bottom - top >= 1:
            self.draw.rectangle([left, top, max(left, right - 1), bottom], fill=fill)

    def line(self, xs, ys, fill, width: int = 2, dash: int = 0) -> None:
        """A polyline through the points; dash > 0 draws it in dashes of that many pixels."""
        points = [self.px(float(x), float(y)) for x, y in zip(xs, ys)]
        if len(points) < 2:
            return
        if not dash:
            self.draw.line(points, fill=fill, width=width, joint="curve")
            return
        travelled = 0.0  # along the whole line, so the dash pattern runs on across the corners
        for (x0, y0), (x1, y1) in zip(points, points[1:]):
            length = math.hypot(x1 - x0, y1 - y0)
            start = 0.0
            while start < length:
                end = min(length, start + dash - (travelled + start) % dash)
                if (travelled + start) // dash % 2 == 0:
                    a, b = start / length, end / length
                    self.draw.line([(x0 + a * (x1 - x0), y0 + a * (y1 - y0)), (x0 + b * (x1 - x0), y0 + b * (y1 - y0))],
                                   fill=fill, width=width)
                start = end
            travelled += length

    def dots(self, xs, ys, fill, r: float = 2.5) -> None:
        for x, y in zip(xs, ys):
            px, py = self.px(float(x), float(y))
            self.draw.ellipse([px - r, py - r, px + r, py + r], fill=fill)

    def hline(self, y: float, fill, label: str = "", dash: int = 6) -> None:
        py = self.px(self.xlim[0], y)[1]
        for x in range(int(self.x0), int(self.x0 + self.w), 2 * dash):
            self.draw.line([x, py, min(x + dash, self.x0 + self.w), py], fill=fill, width=1)
        if label:
            self.sheet.text((self.x0 + self.w - 3, py - 2), label, 11, anchor="rb", fill=fill)


def ticks(lo: float, hi: float, count: int = 5, fmt: str = "{:g}") -> list[tuple[float, str]]:
    """Round tick values between lo and hi."""
    raw = (hi - lo) / max(count, 1)
    step = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    step *= next(m for m in (1, 2, 2.5, 5, 10) if step * m >= raw)
    first = math.ceil(lo / step - 1e-9)
    return [(v, fmt.format(round(v, 10))) for v in (step * i for i in range(first, int(hi / step + 1e-9) + 1))]

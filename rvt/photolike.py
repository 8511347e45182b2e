"""Seedable generators of uploads nobody photographed, to measure the user's path honestly.

* `photo_like(item, rng)`: a Fashion-MNIST item (28x28, light on black) made to look like a phone
  photo: mostly negated to dark-on-light (as the dataset's product photos were), tinted, scaled and
  placed off-centre in a portrait, landscape or square frame, on a tinted background with gradients,
  texture, a vignette or the item's cast shadow, under uneven exposure, with sensor noise and JPEG.
* `non_garment(rng)`: images that are no garment at all: shapes, text, gradients, noise, drawings,
  textures and landscapes, in both polarities.

Same seed, same images. Tune on training-split items and report on test-split items only.
"""
from __future__ import annotations

import io
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

LUMA = np.array([0.299, 0.587, 0.114])
KINDS = ("shapes", "text", "gradient", "noise", "drawing", "texture", "landscape")
WORDS = ("HELLO", "SALE", "42", "RvT", "open", "Lorem ipsum", "A", "xyz", "photo", "2026", "OK", "?!")


def _frame(rng: np.random.Generator) -> tuple[int, int]:
    """(width, height): portrait, landscape or square, long side 128-512 px."""
    long = int(rng.integers(128, 513))
    aspect = rng.choice([1.0, 4 / 3, 3 / 2, 16 / 9])
    short = int(round(long / aspect))
    return (long, short) if rng.random() < 0.5 else (short, long)


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """(h, w) noise in [-1, 1] that varies over about size/cells px: a coarse grid upsampled."""
    width, height = size
    grid = Image.fromarray(rng.uniform(0, 255, (cells, cells)).astype(np.uint8))
    return np.asarray(grid.resize((width, height), Image.Resampling.BICUBIC), np.float64) / 127.5 - 1.0


def _ramp(rng: np.random.Generator, size: tuple[int, int]) -> np.ndarray:
    """(h, w) linear ramp in [-0.5, 0.5] along a random direction."""
    width, height = size
    y, x = np.mgrid[0:1:height * 1j, 0:1:width * 1j]
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * x + np.sin(angle) * y
    return (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-9) - 0.5


def _tint(rng: np.random.Generator, spread: float) -> np.ndarray:
    """(3,) colour multipliers with luma 1, so grey levels keep their brightness."""
    colour = 1.0 + rng.uniform(-spread, spread, 3)
    return colour / float(colour @ LUMA)


def _background(rng: np.random.Generator, size: tuple[int, int], level: float) -> np.ndarray:
    """(h, w, 3) in about [0, 1]: a tinted level with a gradient, texture and a vignette."""
    width, height = size
    gray = np.full((height, width), level)
    gray += rng.uniform(0, 0.25) * _ramp(rng, size)
    texture = rng.integers(4)
    if texture == 1:  # cloth or paper: smooth blotches at two scales
        gray += rng.uniform(0, 0.06) * (_smooth_noise(rng, size, 6) + 0.5 * _smooth_noise(rng, size, 24))
    elif texture == 2:  # wood grain: wavy stripes
        y, x = np.mgrid[0:height, 0:width]
        warp = 8 * _smooth_noise(rng, size, 4)
        gray += rng.uniform(0, 0.05) * np.sin(2 * np.pi * (y + warp) / rng.uniform(4, 14))
    elif texture == 3:  # fine grain
        gray += rng.normal(0, rng.uniform(0, 0.04), (height, width))
    if rng.random() < 0.4:  # vignette
        y, x = np.mgrid[-1:1:height * 1j, -1:1:width * 1j]
        gray -= rng.uniform(0, 0.25) * (x * x + y * y) / 2
    return gray[..., None] * _tint(rng, 0.15)


def photo_like(item: np.ndarray, rng: np.random.Generator) -> Image.Image:
    """A photo-like RGB upload of one Fashion-MNIST item (28, 28) uint8, light on black."""
    size = width, height = _frame(rng)
    side = int(rng.uniform(0.35, 0.9) * min(size))
    left, top = int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1))
    tile = Image.fromarray(item).resize((side, side), Image.Resampling.BICUBIC)
    value = np.asarray(tile, np.float64) / 255.0  # (side, side)
    alpha = np.zeros((height, width))
    alpha[top:top + side, left:left + side] = np.clip(value * 16, 0, 1)  # the item's silhouette

    dark_on_light = rng.random() < 0.75
    level = rng.uniform(0.6, 1.0) if dark_on_light else rng.uniform(0.0, 0.25)
    canvas = _background(rng, size, level)
    if rng.random() < 0.35:  # the item's own soft shadow, offset down and to a side
        blur = Image.fromarray((alpha * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(rng.uniform(2, 8)))
        offset = (int(0.06 * side), int(rng.integers(-1, 2) * 0.05 * side))  # (down, sideways) px
        shadow = np.roll(np.asarray(blur, np.float64) / 255.0, offset, axis=(0, 1))
        canvas *= 1.0 - rng.uniform(0.1, 0.35) * shadow[..., None]

    shade = np.zeros((height, width))
    shade[top:top + side, left:left + side] = 1.0 - value if dark_on_light else value
    colour = _tint(rng, 0.6) if rng.random() < 0.5 else np.ones(3)
    pixels = alpha[..., None] * shade[..., None] * colour + (1.0 - alpha[..., None]) * canvas
    exposure = rng.uniform(0.7, 1.1) * (1.0 + rng.uniform(0, 0.2) * _ramp(rng, size))  # uneven light
    pixels = pixels * exposure[..., None] + rng.normal(0, rng.uniform(0, 6) / 255, pixels.shape)
    image = Image.fromarray((np.clip(pixels, 0, 1) * 255).round().astype(np.uint8))
    if rng.random() < 0.15:
        image = image.convert("L")
    if rng.random() < 0.7:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=int(rng.integers(25, 91)))
        image = Image.open(buffer)
        image.load()
    return image


def photo_like_set(images: np.ndarray, labels: np.ndarray, n: int, seed: int,
                   progress: Callable[[float], None] | None = None) -> tuple[list[Image.Image], np.ndarray]:
    """`n` photo-like uploads of items drawn from `images` (N, 28, 28) uint8, and their labels (n,)."""
    if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels) or n < 1:
        raise ValueError("expected (N, 28, 28) uint8 images, N labels and n >= 1")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(images), size=n, replace=n > len(images))
    uploads = []
    for i, index in enumerate(chosen):
        uploads.append(photo_like(images[index], rng))
        if progress:
            progress((i + 1) / n)
    return uploads, np.asarray(labels)[chosen]


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _draw_shapes(draw: ImageDraw.ImageDraw, rng: np.random.Generator, size, ink) -> None:
    width, height = size
    for _ in range(int(rng.integers(1, 5))):
        x0, y0 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
        w, h = rng.uniform(0.15, 0.6) * width, rng.uniform(0.15, 0.6) * height
        box = [x0, y0, min(width - 1, x0 + w), min(height - 1, y0 + h)]
        kind = rng.integers(4)
        fill = ink if rng.random() < 0.6 else None
        outline_width = int(rng.integers(2, 8))
        if kind == 0:
            draw.ellipse(box, fill=fill, outline=ink, width=outline_width)
        elif kind == 1:
            draw.rectangle(box, fill=fill, outline=ink, width=outline_width)
        elif kind == 2:
            draw.regular_polygon((x0 + w / 2, y0 + h / 2, min(w, h) / 2), int(rng.integers(3, 9)),
                                 rotation=float(rng.uniform(0, 360)), fill=fill, outline=ink)
        else:
            points = [(x0 + rng.uniform(0, w), y0 + rng.uniform(0, h)) for _ in range(int(rng.integers(3, 8)))]
            draw.polygon(points, fill=ink)


def _draw_text(draw, rng, size, ink) -> None:
    width, height = size
    for _ in range(int(rng.integers(1, 4))):
        word = str(rng.choice(WORDS))
        draw.text((rng.uniform(0, width * 0.5), rng.uniform(0, height * 0.7)), word, fill=ink,
                  font=_font(int(rng.uniform(0.1, 0.35) * height)))


def _draw_drawing(draw, rng, size, ink) -> None:
    width, height = size
    cx, cy, r = width / 2 + rng.uniform(-0.1, 0.1) * width, height / 2, rng.uniform(0.2, 0.4) * min(size)
    line = int(rng.integers(2, 7))
    choice = rng.integers(3)
    if choice == 0:  # a face
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=ink, width=line)
        for side in (-1, 1):
            ex, ey = cx + side * r / 2.5, cy - r / 3
            draw.ellipse([ex - r / 8, ey - r / 8, ex + r / 8, ey + r / 8], fill=ink)
        draw.arc([cx - r / 2, cy - r / 6, cx + r / 2, cy + r / 2], 20, 160, fill=ink, width=line)
    elif choice == 1:  # a house
        draw.rectangle([cx - r, cy, cx + r, cy + r], outline=ink, width=line)
        draw.line([(cx - r, cy), (cx, cy - r), (cx + r, cy)], fill=ink, width=line)
        draw.rectangle([cx - r / 4, cy + r / 2, cx + r / 4, cy + r], outline=ink, width=line)
    else:  # a scribble
        points = [(rng.uniform(0, width), rng.uniform(0, height)) for _ in range(int(rng.integers(4, 14)))]
        draw.line(points, fill=ink, width=line, joint="curve")


def _texture(rng, size) -> np.ndarray:
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    period = rng.uniform(6, 40)
    kind = rng.integers(4)
    if kind == 0:  # checkerboard
        return ((x // period + y // period) % 2).astype(np.float64)
    if kind == 1:  # stripes at an angle
        angle = rng.uniform(0, np.pi)
        return 0.5 + 0.5 * np.sin(2 * np.pi * (np.cos(angle) * x + np.sin(angle) * y) / period)
    if kind == 2:  # bricks
        row = (y // period).astype(int)
        shifted = x + (row % 2) * period
        return (((shifted % (2 * period)) > 2) & ((y % period) > 2)).astype(np.float64)
    return 0.5 + 0.5 * np.clip(_smooth_noise(rng, size, 8) + 0.5 * _smooth_noise(rng, size, 40), -1, 1)  # clouds


def _landscape(rng, size) -> np.ndarray:
    width, height = size
    y, x = np.mgrid[0:1:height * 1j, 0:1:width * 1j]
    sky = (0.9 - 0.4 * y)[..., None] * np.array([0.7, 0.85, 1.0])
    horizon = rng.uniform(0.4, 0.7) + 0.1 * _smooth_noise(rng, size, 3)[0][None, :]
    ground = np.array([0.25, 0.5, 0.2]) * (0.7 + 0.3 * _smooth_noise(rng, size, 30)[..., None])
    sun = (((x - rng.uniform(0.1, 0.9)) ** 2 + (y - 0.2) ** 2) < 0.004)[..., None] * 0.3
    return np.where(y[..., None] > horizon[..., None], ground, sky + sun)


def non_garment(rng: np.random.Generator) -> Image.Image:
    """One RGB image that shows no garment: one of KINDS, random polarity and tint."""
    size = width, height = _frame(rng)
    kind = KINDS[int(rng.integers(len(KINDS)))]
    light = rng.random() < 0.6
    paper = rng.uniform(0.75, 1.0) if light else rng.uniform(0.0, 0.25)
    ink = rng.uniform(0.0, 0.35) if light else rng.uniform(0.65, 1.0)
    if kind in ("shapes", "text", "drawing"):
        canvas = Image.new("L", size, int(paper * 255))
        draw = ImageDraw.Draw(canvas)
        {"shapes": _draw_shapes, "text": _draw_text, "drawing": _draw_drawing}[kind](draw, rng, size, int(ink * 255))
        pixels = (np.asarray(canvas, np.float64) / 255.0)[..., None] * _tint(rng, 0.4)
    elif kind == "gradient":
        ramp = _ramp(rng, size) + 0.5
        pixels = (paper + (ink - paper) * ramp)[..., None] * _tint(rng, 0.4)
    elif kind == "noise":
        pixels = rng.uniform(0, 1, (height, width, 1)) if rng.random() < 0.5 else \
            np.clip(0.5 + rng.normal(0, rng.uniform(0.05, 0.3), (height, width, 3)), 0, 1)
    elif kind == "texture":
        pixels = (paper + (ink - paper) * _texture(rng, size))[..., None] * _tint(rng, 0.4)
    else:
        pixels = _landscape(rng, size)
    pixels = pixels + rng.normal(0, rng.uniform(0, 4) / 255, (height, width, 1))
    return Image.fromarray((np.clip(np.broadcast_to(pixels, (height, width, 3)), 0, 1) * 255).round().astype(np.uint8))


def non_garment_set(n: int, seed: int, progress: Callable[[float], None] | None = None) -> list[Image.Image]:
    """`n` non-garment images, the same for the same seed."""
    if n < 1:
        raise ValueError("n must be at least 1")
    rng = np.random.default_rng(seed)
    images = []
    for i in range(n):
        images.append(non_garment(rng))
        if progress:
            progress((i + 1) / n)
    return images

"""Turns any user image into the tensor a checkpoint expects, with Pillow doing the decoding work.

For a Fashion-MNIST model that means: grayscale, light garment on a black background, cropped to
the item and padded to keep its aspect, as the dataset itself was made (product photos negated,
items trimmed, longest side scaled to the frame, centred).

Two paths:
* An image already in the training format (the training size, dark border) passes through
  unchanged, so a raw test image gives exactly the dataset's tensor.
* Anything else is a photo: the background is modelled as a smooth surface fitted to the image's
  outer ring (tint, gradient, shading), the item is what differs from it after a blur that averages
  out noise, texture and JPEG artefacts; a dark item on a light background is negated against the
  background's brightness, the background is set to black, and the item is cropped and padded.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> the Pillow mode the model sees
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601, what Pillow's convert("L") uses


def to_8bit(image: Image.Image) -> Image.Image:
    """16-bit, 32-bit and float images -> 8-bit 'L', scaled by their own range (Pillow clips instead)."""
    if image.mode not in HIGH_BIT_MODES:
        return image
    arr = np.asarray(image, dtype=np.float64)
    lo, hi = float(arr.min()), float(arr.max())
    scaled = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
    return Image.fromarray(scaled.round().astype(np.uint8), mode="L")


def flatten_alpha(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Composite transparent images (RGBA, LA, palette with transparency) onto a solid background."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, background + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image


def border_is_light(gray: Image.Image) -> bool:
    """True when the median of the outer frame of pixels is in the upper half of the range."""
    arr = np.asarray(gray)
    frame = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    return float(np.median(frame)) > 127


@dataclass
class Foreground:
    """Where the item is in a working copy of the upload, and how it relates to its background."""

    mask: np.ndarray  # (h, w) bool: the item, holes filled
    box: tuple[int, int, int, int] | None  # (left, top, right, bottom) of the item in the working copy
    background: np.ndarray  # (h, w, 3) float32: the fitted background surface
    dark_item: bool  # the item is darker than its background (a photo on a light background)


@dataclass
class Photo:
    """Tuning of the photo path, in units of the working copy; defaults measured on training-split items."""

    work_side: int = 8  # the item is found on a copy whose long side is this many times the model's
    ring: float = 0.04  # the background is fitted on the outer 4% of each side
    blur: float = 1.5  # px: averages out sensor noise, fine texture and JPEG blocks before the threshold
    ring_quantile: float = 0.99  # the threshold sits above this quantile of the blurred background residual
    margin: float = 1.6  # ... times this factor
    floor: float = 12.0  # ... and never below this many grey levels, so a flat background stays whole
    speck: int = 3  # px: an opening this wide removes isolated specks that survive the blur
    sliver: float = 0.05  # rows/columns holding at most this fraction of the fullest one's item pixels are dropped
    lean: float = 10.0  # grey levels: how much lighter than a light background an item may be and still be dark
    stretch: float = 0.5  # % of the brightest pixels clipped when the item is stretched to white


@dataclass
class View:
    """What the model sees and how it was made from the upload, for a panel and a plain-words note."""

    image: Image.Image  # the model's input before normalisation, at the requested size
    box: tuple[int, int, int, int] | None  # the crop in the upload's pixels (after EXIF rotation)
    inverted: bool  # negated (dark item on a light background, or invert="always")
    unchanged: bool  # already in the training format and asked at the training size: passed through as it is


def _ring(height: int, width: int, fraction: float) -> np.ndarray:
    r = max(1, round(fraction * min(height, width)))
    ring = np.zeros((height, width), bool)
    ring[:r], ring[-r:], ring[:, :r], ring[:, -r:] = True, True, True, True
    return ring


def _fit_background(arr: np.ndarray, ring: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A quadratic surface per channel fitted to the ring, twice (the second fit drops item pixels
    that touch the border). Returns the surface (h, w, 3) and the ring pixels kept (h, w) bool."""
    height, width = arr.shape[:2]
    v, u = np.mgrid[0:1:height * 1j, 0:1:width * 1j].astype(np.float32)
    design = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], -1)  # (h, w, 6)
    keep = ring.copy()
    for _ in range(2):
        a, b = design[keep].astype(np.float64), arr[keep].astype(np.float64)
        coef = np.linalg.solve(a.T @ a + 1e-9 * np.eye(6), a.T @ b)  # (6, 3): least squares, normal equations
        surface = design @ coef.astype(np.float32)
        residual = np.linalg.norm(arr - surface, axis=-1)
        inliers = residual[keep]
        spread = 1.4826 * np.median(np.abs(inliers - np.median(inliers))) + 1.0
        keep = ring & (residual <= np.median(inliers) + 3 * spread)
    return surface, keep


def _blur(values: np.ndarray, radius: float) -> np.ndarray:
    """Gaussian blur of a (h, w) array in [0, 255] with Pillow."""
    image = Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8))
    return np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), np.float32)


def _open(mask: np.ndarray, size: int) -> np.ndarray:
    """Morphological opening (erode then dilate) of a bool mask with Pillow's min/max filters."""
    image = Image.fromarray(mask.astype(np.uint8) * 255)
    image = image.filter(ImageFilter.MinFilter(size)).filter(ImageFilter.MaxFilter(size))
    return np.asarray(image) > 127


def _fill(mask: np.ndarray) -> np.ndarray:
    """Holes filled: a pixel is inside when the mask surrounds it along both its row and its column."""
    def spans(m: np.ndarray, axis: int) -> np.ndarray:
        before = np.cumsum(m, axis=axis) > 0
        after = np.flip(np.cumsum(np.flip(m, axis), axis=axis), axis) > 0
        return before & after
    return mask | (spans(mask, 0) & spans(mask, 1))


def find_foreground(arr: np.ndarray, photo: Photo | None = None) -> Foreground:
    """The item in an (h, w, 3) float32 image in [0, 255]: fitted background, mask, box, polarity."""
    photo = photo or Photo()
    height, width = arr.shape[:2]
    ring = _ring(height, width, photo.ring)
    background, kept = _fit_background(arr, ring)
    residual = np.linalg.norm(arr - background, axis=-1) / np.sqrt(3.0)  # (h, w): RMS over channels
    smooth = _blur(residual, photo.blur)
    threshold = max(photo.floor, photo.margin * float(np.quantile(smooth[kept], photo.ring_quantile)))
    mask = _open(smooth > threshold, photo.speck)
    if not mask.any():
        return Foreground(mask=np.ones((height, width), bool), box=None, background=background,
                          dark_item=float(np.median(background @ LUMA)) > 127)
    # Rows and columns the item fills only a sliver of are texture or stripes that survived the blur.
    rows, cols = (np.flatnonzero(count > photo.sliver * count.max()) for count in (mask.sum(1), mask.sum(0)))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    mask = _fill(mask)
    mask[:, :box[0]], mask[:, box[2]:], mask[:box[1]], mask[box[3]:] = False, False, False, False
    luma, background_luma = arr @ LUMA, background @ LUMA
    contrast = float((luma - background_luma)[mask].mean())  # < 0: the item is darker than its background
    # An item about as bright as its background is taken as a photo on a light background when it is one.
    lean = photo.lean if float(background_luma[mask].mean()) > 127 else -photo.lean
    dark_item = contrast < lean
    return Foreground(mask=mask, box=box, background=background, dark_item=dark_item)


def _item_values(arr: np.ndarray, found: Foreground, invert: bool) -> np.ndarray:
    """(h, w, C) in [0, 1]: the item light on black, the background exactly black.

    Negation divides by the local white (the brighter of the background surface and the item's own
    highlights), so shading, dim exposure and tinted paper do not turn into grey garment."""
    background = found.background if arr.shape[-1] == 3 else found.background @ LUMA[:, None]  # (h, w, C)
    inside = found.mask[..., None]
    if invert:
        highlight = np.quantile(arr[found.mask], 0.99, axis=0)  # (C,)
        white = np.maximum(np.maximum(background, highlight), 1.0)
        values = 1.0 - arr / white
    else:
        values = (arr - background) / np.maximum(255.0 - background, 1.0)
    return np.clip(values, 0.0, 1.0) * inside


def _working_copy(image: Image.Image, side: int) -> tuple[Image.Image, float]:
    """A copy whose long side is `side` px (up or down), and the factor back to the upload's pixels."""
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0), 1.0 / scale


@dataclass
class Preprocess:
    image_size: tuple[int, int] = (28, 28)  # (H, W) the model was trained at
    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.286])  # Fashion-MNIST train-split statistics
    std: list[float] = field(default_factory=lambda: [0.353])
    invert: str = "auto"  # "auto": invert a dark item on a light background; "never"; "always"
    fit: str = "content"  # "content": find the item, crop to it, pad; "pad": pad the whole image; "stretch"

    def __post_init__(self):
        self.image_size = tuple(int(s) for s in self.image_size)
        if self.invert not in ("auto", "never", "always"):
            raise ValueError(f"invert must be 'auto', 'never' or 'always', not {self.invert!r}")
        if self.fit not in ("content", "pad", "stretch"):
            raise ValueError(f"fit must be 'content', 'pad' or 'stretch', not {self.fit!r}")
        if self.channels not in MODES:
            raise ValueError(f"channels must be 1 (grayscale), 3 (RGB) or 4 (RGBA), not {self.channels}")

    def to_dict(self) -> dict:
        return asdict(self)

    def view(self, image: Image.Image, size: tuple[int, int] | None = None) -> View:
        """The model's view of `image` at `size` (H, W) and how it was made: see `View`."""
        height, width = size or self.image_size
        image = ImageOps.exif_transpose(to_8bit(image))
        image = flatten_alpha(image, background=(255, 255, 255))  # a cut-out is a product photo on white
        model_mode = image.convert(MODES[self.channels])
        gray = model_mode if self.channels == 1 else model_mode.convert("L")
        light_border = border_is_light(gray)
        if image.size == self.image_size[::-1] and self.invert != "always" and not light_border:
            # Already the training format: nothing to find or invert; only resized for another analysis size.
            if image.size != (width, height):
                model_mode = model_mode.resize((width, height), Image.Resampling.BILINEAR)
            return View(image=model_mode, box=None, inverted=False, unchanged=image.size == (width, height))
        if self.fit != "content":
            inverted = self.invert == "always" or (self.invert == "auto" and light_border)
            shown = ImageOps.invert(model_mode) if inverted else model_mode
            if self.fit == "stretch":
                shown = shown.resize((width, height), Image.Resampling.BILINEAR)
            else:
                shown = ImageOps.pad(shown, (width, height), method=Image.Resampling.BILINEAR, color=0)
            return View(image=shown, box=None, inverted=inverted, unchanged=False)
        return self._photo(image, (height, width))

    def _photo(self, image: Image.Image, size: tuple[int, int], photo: Photo | None = None) -> View:
        photo = photo or Photo()
        height, width = size
        work, back = _working_copy(image, min(1024, max(224, photo.work_side * max(size))))
        arr = np.asarray(work.convert("RGB"), np.float32)  # (h, w, 3)
        found = find_foreground(arr, photo)
        inverted = {"auto": found.dark_item, "always": True, "never": False}[self.invert]
        channels = min(self.channels, 3)
        pixels = arr if channels == 3 else (arr @ LUMA)[..., None]
        values = _item_values(pixels, found, inverted)  # (h, w, C)
        if found.box is not None:
            left, top, right, bottom = found.box
            values = values[top:bottom, left:right]
        # A crop thinner than one output pixel (a line) is padded with black so its short side survives.
        rows, cols = values.shape[:2]
        extra_rows, extra_cols = max(0, -(-cols // width) - rows), max(0, -(-rows // height) - cols)
        values = np.pad(values, ((extra_rows // 2, extra_rows - extra_rows // 2),
                                 (extra_cols // 2, extra_cols - extra_cols // 2), (0, 0)))
        shown = Image.fromarray((values * 255).round().astype(np.uint8).squeeze(-1) if channels == 1
                                else (values * 255).round().astype(np.uint8))
        shown = ImageOps.pad(shown, (width, height), method=Image.Resampling.BILINEAR, color=0)
        # The dataset's items all have their brightest pixel at 230-255: exposure and ink are stretched alike.
        shown = ImageOps.autocontrast(shown, cutoff=(0, photo.stretch), preserve_tone=True)
        box = None if found.box is None else tuple(round(c * back) for c in found.box)
        return View(image=shown.convert(MODES[self.channels]), box=box, inverted=inverted, unchanged=False)

    def to_image(self, image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
        """The model's view of `image` as a PIL image of `size` (H, W), before normalisation: exactly
        what `to_unit` and `__call__` feed the model, for a "what the model sees" panel."""
        return self.view(image, size).image

    def to_unit(self, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        """(C, H, W) float in [0, 1]."""
        arr = np.asarray(self.to_image(image, size), dtype=np.float32) / 255.0
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr))

    def normalize(self, unit: torch.Tensor) -> torch.Tensor:
        """[0, 1] tensors (..., C, H, W) -> model input."""
        mean = torch.tensor(self.mean, dtype=unit.dtype, device=unit.device)[:, None, None]
        std = torch.tensor(self.std, dtype=unit.dtype, device=unit.device)[:, None, None]
        return (unit - mean) / std

    def __call__(self, image: Image.Image, size: tuple[int, int] | None = None) -> torch.Tensor:
        """PIL image -> normalised (C, H, W) tensor at `size` (default: the training size)."""
        return self.normalize(self.to_unit(image, size))


class ImageInputError(ValueError):
    """An upload that is not a usable image; the message says what is accepted."""


ACCEPTED = ("accepted: a single still image (PNG, JPEG, WebP, BMP, TIFF, GIF) of at least {min_side}x{min_side} "
            "pixels and at most {mp} megapixels")
FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")  # the decoders tried, no others (no AVIF, PCX, ...)
MAX_PIXELS = 40_000_000
MIN_SIDE = 8


def read_image(path, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode an untrusted file with Pillow, refusing what cannot be a sensible model input."""
    accepted = ACCEPTED.format(min_side=min_side, mp=max_pixels // 1_000_000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path, formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(f"the image is {width}x{height} pixels ({width * height / 1e6:.0f} "
                                      f"megapixels), too large to decode safely; {accepted}")
            if getattr(image, "n_frames", 1) > 1:
                raise ImageInputError(f"the file is an animation with {image.n_frames} frames; {accepted}")
            image.load()
    except ImageInputError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageInputError(f"refused as a decompression bomb ({e}); {accepted}") from None
    except UnidentifiedImageError:
        raise ImageInputError(f"the file is not an image Pillow can read; {accepted}") from None
    except FileNotFoundError:
        raise ImageInputError(f"there is no file {os.path.basename(str(path))!r} (on a server: the upload was removed "
                              f"after its time to live): open the image again") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(f"the image is damaged or truncated ({e}); {accepted}") from None
    if min(image.size) < min_side:
        raise ImageInputError(f"the image is only {image.size[0]}x{image.size[1]} pixels; {accepted}")
    return image

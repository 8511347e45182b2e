"""Turns any user image into the tensor a checkpoint expects, with Pillow doing the decoding work.

For a Fashion-MNIST model that means: grayscale, light garment on a black background (photos on a
light background are inverted), cropped to the item and padded to keep its aspect, as the dataset
itself was made (items trimmed, longest side scaled to the frame, centred).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

HIGH_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # channels -> the Pillow mode the model sees


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
class Preprocess:
    image_size: tuple[int, int] = (28, 28)  # (H, W) the model was trained at
    channels: int = 1
    mean: list[float] = field(default_factory=lambda: [0.286])  # Fashion-MNIST train-split statistics
    std: list[float] = field(default_factory=lambda: [0.353])
    invert: str = "auto"  # "auto": invert when the border is light; "never"; "always"
    fit: str = "content"  # "content": crop to the item then pad; "pad": pad the whole image; "stretch"

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

    def to_image(self, image: Image.Image, size: tuple[int, int] | None = None) -> Image.Image:
        """The model's view of `image` as a PIL image of `size` (H, W), before normalisation."""
        height, width = size or self.image_size
        image = ImageOps.exif_transpose(to_8bit(image))
        image = flatten_alpha(image, background=(255, 255, 255))
        image = image.convert(MODES[self.channels])
        gray = image if self.channels == 1 else image.convert("L")
        if self.invert == "always" or (self.invert == "auto" and border_is_light(gray)):
            image, gray = ImageOps.invert(image), ImageOps.invert(gray)
        if self.fit == "content":
            # Items are light on dark now: the bounding box of clearly-lit pixels is the item.
            box = gray.point(lambda v: 255 if v > 24 else 0).getbbox()
            if box is not None:
                image = image.crop(box)
        if self.fit == "stretch":
            return image.resize((width, height), Image.Resampling.BILINEAR)
        return ImageOps.pad(image, (width, height), method=Image.Resampling.BILINEAR, color=0)

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
MAX_PIXELS = 40_000_000
MIN_SIDE = 8


def read_image(path, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> Image.Image:
    """Decode an untrusted file with Pillow, refusing what cannot be a sensible model input."""
    accepted = ACCEPTED.format(min_side=min_side, mp=max_pixels // 1_000_000)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
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
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageInputError(f"the image is damaged or truncated ({e}); {accepted}") from None
    if min(image.size) < min_side:
        raise ImageInputError(f"the image is only {image.size[0]}x{image.size[1]} pixels; {accepted}")
    return image

"""Datasets for training: Fashion-MNIST from Debian's idx files, a folder of images per class, or a
`file,label` CSV (what `python -m rvt.scenes` writes)."""
from __future__ import annotations

import csv
import gzip
import os
import struct
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .preprocess import Preprocess

FASHION_MNIST_ENV = "RVT_FASHION_MNIST"
FASHION_MNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class DatasetError(FileNotFoundError):
    pass


def read_idx(path: Path) -> np.ndarray:
    """An idx file (optionally .gz) of unsigned bytes -> ndarray with the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DatasetError(f"{path}: not an idx file of unsigned bytes")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says {shape} but the file holds {body.size} values")
    return body.reshape(shape)


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT)


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """split 'train' (60k) or 'test' (10k) -> images (N, 1, 28, 28) float in [0, 1], labels (N,)."""
    prefix = {"train": "train", "test": "t10k"}[split]
    root = fashion_mnist_root(root)
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        found = [root / f"{prefix}-{kind}{ext}" for ext in (".gz", "")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise DatasetError(
                f"Fashion-MNIST not found in {root} (looked for {prefix}-{kind}[.gz]). Install it with "
                f"`apt-get update && apt-get install -y dataset-fashion-mnist`, or point --data-root / "
                f"${FASHION_MNIST_ENV} at a folder holding the idx files")
        paths.append(found[0])
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.shape[0] != labels.shape[0]:
        raise DatasetError(f"{root}: {images.shape[0]} images but {labels.shape[0]} labels")
    return torch.from_numpy(images.copy()).unsqueeze(1).float() / 255.0, torch.from_numpy(labels.astype(np.int64))


def load_image_folder(root: str | Path, preprocess: Preprocess) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """root/<class>/<image> -> images (N, C, H, W) in [0, 1] via `preprocess`, labels, class names."""
    root = Path(root)
    classes = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not classes:
        raise DatasetError(f"{root}: expected one sub-folder per class holding images")
    images, labels = [], []
    for index, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as image:
                    images.append(preprocess.to_unit(image))
            except (UnidentifiedImageError, OSError) as e:
                raise DatasetError(f"{path}: not a readable image ({e})") from None
            labels.append(index)
    if not images:
        raise DatasetError(f"{root}: no images with suffixes {sorted(IMAGE_SUFFIXES)} in its class folders")
    return torch.stack(images), torch.tensor(labels), classes


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (kept that way to hold large sets in a quarter of the memory) -> float in [0, 1]."""
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of (N, C, H, W) images in [0, 1] (or uint8), in chunks of `chunk` images."""
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    squares = torch.zeros_like(total)
    for i in range(0, len(images), chunk):
        x = to_unit(images[i:i + chunk]).double().transpose(0, 1).flatten(1)  # (C, n*H*W)
        total += x.sum(1)
        squares += (x * x).sum(1)
    n = images.numel() // images.shape[1]
    mean = total / n
    std = ((squares - n * mean ** 2) / max(1, n - 1)).clamp_min(0).sqrt().clamp_min(1e-6)
    return mean.tolist(), std.tolist()


def load_labels_csv(path: str | Path, preprocess: Preprocess,
                    classes: list[str] | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """A `file,label` CSV (header row, files relative to its folder) -> images (N, C, H, W) in [0, 1]
    via `preprocess`, labels, class names (`classes`, or the sorted distinct labels)."""
    path = Path(path)
    if path.is_dir():
        path = path / "labels.csv"
    if not path.is_file():
        raise DatasetError(f"{path}: no such file; expected a CSV with the header `file,label`")
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    if not rows or [c.strip() for c in rows[0]] != ["file", "label"]:
        raise DatasetError(f"{path}: the first row must be the header `file,label`, not {rows[0] if rows else 'empty'}")
    rows = [r for r in rows[1:] if r]
    if not rows:
        raise DatasetError(f"{path}: no rows after the header")
    bad = [i + 2 for i, r in enumerate(rows) if len(r) != 2]
    if bad:
        raise DatasetError(f"{path}: line {bad[0]} does not have exactly two fields `file,label`")
    classes = list(classes) if classes else sorted({label for _, label in rows})
    unknown = sorted({label for _, label in rows} - set(classes))
    if unknown:
        raise DatasetError(f"{path}: labels {unknown} are not among the classes {classes}")
    images = []
    for name, _ in rows:
        try:
            with Image.open(path.parent / name) as image:
                images.append(preprocess.to_unit(image))
        except (UnidentifiedImageError, OSError) as e:
            raise DatasetError(f"{path.parent / name}: not a readable image ({e})") from None
    return torch.stack(images), torch.tensor([classes.index(label) for _, label in rows]), classes

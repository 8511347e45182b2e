"""Evaluate a checkpoint on the Fashion-MNIST test split (or an image folder).

`python -m rvt.evaluate --checkpoint PATH [--limit N] [--confusion confusion.png]` prints top-1
accuracy, per-class accuracy and the confusion matrix, and saves the matrix as an image.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint
from .data import DatasetError, load_fashion_mnist, load_image_folder
from .device import PRECISIONS, prediction_agreement, with_precision


@torch.no_grad()
def confusion_matrix(model, images: torch.Tensor, labels: torch.Tensor, normalize, device,
                     num_classes: int, batch: int = 500) -> np.ndarray:
    """(classes, classes) counts: rows are true classes, columns predictions."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in tqdm(range(0, len(images), batch), desc="evaluating", leave=False):
        predictions = model(normalize(images[i:i + batch].to(device))).argmax(-1).cpu()
        np.add.at(matrix, (labels[i:i + batch].numpy(), predictions.numpy()), 1)
    return matrix


def report(matrix: np.ndarray, classes: list[str]) -> dict:
    per_class = matrix.diagonal() / matrix.sum(1).clip(min=1)
    return {"accuracy": float(matrix.diagonal().sum() / matrix.sum()), "n": int(matrix.sum()),
            "per_class": {name: float(a) for name, a in zip(classes, per_class)}}


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str) -> Figure:
    fig = Figure(figsize=(8, 7), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", fontsize=8,
                color="white" if count > matrix.max() / 2 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rvt.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--image-folder", type=Path, help="evaluate on root/<class>/<image> instead")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx files")
    p.add_argument("--limit", type=int, help="only the first N test images")
    p.add_argument("--confusion", type=Path, default=Path("confusion.png"))
    p.add_argument("--json", type=Path, help="also write the figures as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="bf16: bfloat16 weights (CPU too); also prints top-1 agreement with fp32")
    args = p.parse_args(argv)
    try:
        bundle = load_checkpoint(args.checkpoint, args.device)
        if args.image_folder:
            pre = bundle.preprocess
            images, labels, classes = load_image_folder(args.image_folder, pre)
            if classes != bundle.labels:
                raise SystemExit(f"error: folder classes {classes} differ from the checkpoint's {bundle.labels}")
        else:
            images, labels = load_fashion_mnist("test", args.data_root)
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    model = with_precision(bundle.model, args.precision)
    matrix = confusion_matrix(model, images, labels, bundle.preprocess.normalize, bundle.device, len(bundle.labels))
    result = report(matrix, bundle.labels)
    if model is not bundle.model:
        result["agreement_with_fp32"] = prediction_agreement(bundle.model, model, images,
                                                             bundle.preprocess.normalize, bundle.device)
        print(f"{args.precision}: top-1 agreement with fp32 {result['agreement_with_fp32']:.2%}")
    print(f"top-1 accuracy: {result['accuracy']:.2%} on {result['n']} images")
    for name, acc in result["per_class"].items():
        print(f"  {name:<12} {acc:.2%}")
    print("confusion matrix (rows: true, columns: predicted):")
    print(matrix)
    fig = confusion_figure(matrix, bundle.labels, f"{args.checkpoint.name}: {result['accuracy']:.2%} top-1")
    fig.savefig(args.confusion)
    if args.json:
        args.json.write_text(json.dumps({**result, "confusion": matrix.tolist()}, indent=2))


if __name__ == "__main__":
    main()

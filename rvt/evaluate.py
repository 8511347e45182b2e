"""Evaluate a checkpoint on the Fashion-MNIST test split (or an image folder).

`python -m rvt.evaluate --checkpoint PATH [--limit N] [--confusion confusion.png]` prints top-1
accuracy, per-class accuracy and the confusion matrix, and saves the matrix as an image.

What a user gets, on the test split only:
  --user-path       the test images as PIL images through `bundle.preprocess`, as an upload goes
  --photo-like N    N test items made to look like phone photos (rvt.photolike, seeded by --seed)
  --ood N           the novelty notice (rvt.novelty): AUROC and flag rates against N generated
                    non-garment images, on the clean test images and the photo-like ones
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint
from .data import DatasetError, load_fashion_mnist, load_image_folder
from .device import PRECISIONS, prediction_agreement, with_precision
from .novelty import auroc, scores
from .photolike import non_garment_set, photo_like_set


@torch.no_grad()
def confusion_matrix(model, images: torch.Tensor, labels: torch.Tensor, normalize, device,
                     num_classes: int, batch: int = 500) -> np.ndarray:
    """(classes, classes) counts: rows are true classes, columns predictions."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    for i in tqdm(range(0, len(images), batch), desc="evaluating", leave=False):
        predictions = model(normalize(images[i:i + batch].to(device))).argmax(-1).cpu()
        np.add.at(matrix, (labels[i:i + batch].numpy(), predictions.numpy()), 1)
    return matrix


def preprocessed(preprocess, uploads, desc: str) -> torch.Tensor:
    """PIL images -> (N, C, H, W) model inputs through the user's preprocessing."""
    return torch.stack([preprocess(image) for image in tqdm(uploads, desc=desc, leave=False)])


def raw_images(images: torch.Tensor) -> list[Image.Image]:
    """(N, 1, H, W) in [0, 1] -> the 8-bit grayscale images they were read from."""
    return [Image.fromarray(pixels) for pixels in (images[:, 0] * 255).round().byte().numpy()]


def user_figures(bundle, model, images: torch.Tensor, labels: torch.Tensor, args) -> dict:
    """The user-path, photo-like and novelty figures the flags ask for (see the module docstring)."""
    identity, classes, out = (lambda x: x), len(bundle.labels), {}
    sets = {}
    if args.user_path or args.ood:
        sets["clean"] = preprocessed(bundle.preprocess, raw_images(images), "user path")
    if args.user_path:
        matrix = confusion_matrix(model, sets["clean"], labels, identity, bundle.device, classes)
        out["user_path_accuracy"] = report(matrix, bundle.labels)["accuracy"]
        print(f"user path (PIL images through bundle.preprocess): {out['user_path_accuracy']:.2%} top-1")
    if args.photo_like:
        raw = (images[:, 0] * 255).round().byte().numpy()
        uploads, truth = photo_like_set(raw, labels.numpy(), args.photo_like, args.seed)
        sets["photo_like"] = preprocessed(bundle.preprocess, uploads, "photo-like")
        matrix = confusion_matrix(model, sets["photo_like"], torch.from_numpy(truth), identity, bundle.device, classes)
        out["photo_like"] = {"n": args.photo_like, "seed": args.seed, **report(matrix, bundle.labels)}
        print(f"photo-like test items: {out['photo_like']['accuracy']:.2%} top-1 on {args.photo_like} "
              f"(seed {args.seed})")
    if args.ood:
        non_garments = non_garment_set(args.ood, args.seed + 1)
        sets["non_garment"] = preprocessed(bundle.preprocess, non_garments, "non-garments")
        found, stats = {}, None
        for name, x in sets.items():
            found[name], _, stats = scores(bundle, x)
        novelty = {"method": "energy (no statistics: no threshold)" if stats is None else "mahalanobis+pca",
                   "threshold": None if stats is None else stats.threshold, "n_non_garment": args.ood,
                   "auroc_non_garment_vs": {name: auroc(found["non_garment"], s) for name, s in found.items()
                                            if name != "non_garment"}}
        line = ", ".join(f"{k} {v:.4f}" for k, v in novelty["auroc_non_garment_vs"].items())
        if stats is not None:
            novelty["flagged"] = {name: float((s > stats.threshold).float().mean()) for name, s in found.items()}
            line += "; flagged: " + ", ".join(f"{k} {v:.2%}" for k, v in novelty["flagged"].items())
        out["novelty"] = novelty
        print(f"novelty ({novelty['method']}): AUROC of non-garments against {line}")
    return out


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
    p.add_argument("--user-path", action="store_true", help="also through PIL images and bundle.preprocess")
    p.add_argument("--photo-like", type=int, default=0, metavar="N", help="also on N photo-like test items")
    p.add_argument("--ood", type=int, default=0, metavar="N", help="also the novelty notice against N non-garments")
    p.add_argument("--seed", type=int, default=2026, help="seed of the photo-like and non-garment sets")
    args = p.parse_args(argv)
    if args.image_folder and (args.user_path or args.photo_like or args.ood):
        p.error("--user-path, --photo-like and --ood measure the Fashion-MNIST test split, not an image folder")
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
    if not args.image_folder:
        result.update(user_figures(bundle, model, images, labels, args))
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

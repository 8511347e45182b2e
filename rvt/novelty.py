"""How unlike the training data an input is: a score, a threshold chosen on held-out data, plain words.

The score adds two distances, each in standard deviations of held-out training images:
* the model's view: the Mahalanobis distance of the CLS feature (the input of `mlp_head`) to the
  nearest class mean, with one covariance shared by the classes (Lee et al., 2018);
* the image itself: how badly the model input (the preprocessed image) is rebuilt from the top
  principal components of the training images (a texture, text or a landscape is not).
Picked by measurement against maximum softmax, energy and either distance alone (the model card has
the table). The threshold is a quantile of held-out training images' scores, so about 1 - quantile
of in-distribution images are flagged.

The statistics live beside the checkpoint (`name.novelty.safetensors`, made by
`python -m rvt.novelty --checkpoint name.safetensors`). Without them the score falls back to the
energy of the logits (-logsumexp), which ranks inputs but has no calibrated threshold: `flag` is None
and `reason` says why.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import threading
import weakref
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

SUFFIX = ".novelty.safetensors"
FORMAT = "rvt-lens-novelty/1"
TENSORS = ("means", "precision", "pixel_mean", "components", "standard", "heldout")


@dataclass
class Novelty:
    score: float  # higher means less like the training data
    flag: bool | None  # score above threshold; None when no threshold is known for this checkpoint
    threshold: float | None
    method: str  # "mahalanobis+pca" or "energy" (the fallback)
    percentile: float | None  # % of held-out training images that score lower (None without statistics)
    parts: dict[str, float]  # the score's terms, named for a reader
    reason: str  # the finding in plain words, for the app

    def __str__(self) -> str:
        return self.reason


@dataclass
class NoveltyStats:
    means: torch.Tensor  # (K, D) class means of the CLS feature
    precision: torch.Tensor  # (D, D) inverse of the shared covariance
    pixel_mean: torch.Tensor  # (P,) mean model input, flattened
    components: torch.Tensor  # (k, P) top principal components of the training inputs
    standard: torch.Tensor  # (2, 2) held-out mean and std of the two distances
    heldout: torch.Tensor  # (Q,) sorted quantiles of held-out scores, for percentiles
    threshold: float
    quantile: float  # the held-out quantile the threshold sits at
    fingerprint: str  # of the weights the statistics belong to

    def save(self, path: str | Path) -> Path:
        tensors = {name: getattr(self, name).contiguous() for name in TENSORS}
        tensors["components"] = tensors["components"].half()  # halves the file; far below the score's noise
        metadata = {"format": FORMAT, "threshold": repr(self.threshold), "quantile": repr(self.quantile),
                    "fingerprint": self.fingerprint}
        save_file(tensors, str(path), metadata=metadata)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> NoveltyStats:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{Path(path).name} is not a novelty statistics file ({FORMAT})")
            tensors = {name: f.get_tensor(name).float() for name in TENSORS}
        return cls(**tensors, threshold=float(meta["threshold"]), quantile=float(meta["quantile"]),
                   fingerprint=meta["fingerprint"])

    def distances(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """CLS features (B, D) and model inputs (B, C, H, W) -> (B, 2): feature distance to the nearest
        class mean, and the inputs' error after projection on the principal components."""
        diff = features.float()[:, None, :] - self.means[None]  # (B, K, D)
        squared = torch.einsum("bkd,de,bke->bk", diff, self.precision, diff)
        feature = squared.min(-1).values.clamp_min(0).sqrt()
        centred = inputs.float().flatten(1) - self.pixel_mean  # (B, P)
        pixel = (centred - centred @ self.components.T @ self.components).norm(dim=1)
        return torch.stack([feature, pixel], -1)

    def standardise(self, distances: torch.Tensor) -> torch.Tensor:
        """(B, 2) -> (B, 2) in held-out standard deviations above the held-out mean."""
        return (distances - self.standard[:, 0]) / self.standard[:, 1]

    def score(self, features: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """(B,) the novelty score: the two standardised distances added."""
        return self.standardise(self.distances(features, inputs)).sum(-1)

    def percentile(self, score: float) -> float:
        return 100.0 * float(torch.searchsorted(self.heldout, torch.tensor([score])).item()) / len(self.heldout)


def auroc(positive, negative) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    positive, negative = np.asarray(positive, np.float64), np.sort(np.asarray(negative, np.float64))
    if not len(positive) or not len(negative):
        raise ValueError("auroc needs scores on both sides")
    below = np.searchsorted(negative, positive, "left")
    ties = np.searchsorted(negative, positive, "right") - below
    return float((below + 0.5 * ties).sum() / (len(positive) * len(negative)))


def fingerprint(model: torch.nn.Module) -> str:
    """A short hash of the weights, so statistics never describe another model."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def stats_path(checkpoint: str | Path) -> Path:
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.stem + SUFFIX)


@contextmanager
def cls_features(model: torch.nn.Module):
    """Records the CLS feature (the input of `model.mlp_head`) of forwards run by this thread only, so
    a shared model can serve other users meanwhile. Yields a list that collects (B, D) tensors."""
    owner, recorded = threading.get_ident(), []

    def hook(module, args):
        if threading.get_ident() == owner:
            recorded.append(args[0].detach())

    handle = model.mlp_head.register_forward_pre_hook(hook)
    try:
        yield recorded
    finally:
        handle.remove()


@torch.no_grad()
def features(bundle, images: torch.Tensor, batch: int = 500, progress: Callable[[float], None] | None = None,
             check: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised inputs (N, C, H, W) -> CLS features (N, D) and logits (N, K), on the CPU."""
    feats, logits = [], []
    with cls_features(bundle.model) as recorded:
        for start in range(0, len(images), batch):
            if check:
                check()
            logits.append(bundle.model(images[start:start + batch].to(bundle.device)).float().cpu())
            feats.append(recorded.pop().float().cpu())
            if progress:
                progress(min(1.0, (start + batch) / len(images)))
    return torch.cat(feats), torch.cat(logits)


def fit(bundle, train_features: torch.Tensor, train_inputs: torch.Tensor, train_labels: torch.Tensor,
        heldout_features: torch.Tensor, heldout_inputs: torch.Tensor, quantile: float = 0.98,
        components: int = 50) -> NoveltyStats:
    """Statistics from training features (N, D), inputs (N, C, H, W) and labels (N,); the threshold is
    the `quantile` of the held-out images' scores (about 1 - quantile of them get flagged)."""
    if not 0.5 <= quantile < 1:
        raise ValueError(f"quantile must be in [0.5, 1), not {quantile}")
    if train_features.ndim != 2 or not len(train_features) == len(train_inputs) == len(train_labels) \
            or len(heldout_features) != len(heldout_inputs) or not len(heldout_features):
        raise ValueError("expected N training features (N, D), inputs and labels, and some held-out images")
    x = train_features.double()
    means = torch.stack([x[train_labels == k].mean(0) for k in range(len(bundle.labels))])  # (K, D)
    centred = x - means[train_labels]
    covariance = centred.T @ centred / len(x)  # (D, D), shared by the classes
    ridge = 1e-6 * covariance.diagonal().mean() * torch.eye(x.shape[1], dtype=x.dtype)
    pixels = train_inputs.double().flatten(1)  # (N, P)
    pixel_mean = pixels.mean(0)
    _, _, basis = torch.linalg.svd(pixels - pixel_mean, full_matrices=False)  # rows: principal directions
    stats = NoveltyStats(means=means.float(), precision=torch.linalg.pinv(covariance + ridge).float(),
                         pixel_mean=pixel_mean.float(), components=basis[:components].float().half().float(),
                         standard=torch.tensor([[0.0, 1.0], [0.0, 1.0]]), heldout=torch.zeros(1), threshold=0.0,
                         quantile=quantile, fingerprint=fingerprint(bundle.model))
    distances = stats.distances(heldout_features, heldout_inputs)  # (M, 2)
    stats.standard = torch.stack([distances.mean(0), distances.std(0).clamp_min(1e-6)], -1)
    scores = stats.score(heldout_features, heldout_inputs)
    stats.heldout = torch.quantile(scores, torch.linspace(0, 1, 1001)).contiguous()
    stats.threshold = float(torch.quantile(scores, quantile))
    return stats


_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (stats or None, why not)


def load_stats(bundle) -> tuple[NoveltyStats | None, str]:
    """The statistics stored beside `bundle.source` if they match its weights, else (None, why not)."""
    if bundle.model in _CACHE:
        return _CACHE[bundle.model]
    path = stats_path(bundle.source) if bundle.source else None
    if path is None or not path.is_file():
        found = None, "no novelty statistics are stored beside this checkpoint"
    else:
        try:
            stats = NoveltyStats.load(path)
        except (SafetensorError, OSError, ValueError, KeyError) as e:
            found = None, f"the novelty statistics file {path.name} is unreadable ({e})"
        else:
            if stats.fingerprint != fingerprint(bundle.model):
                found = None, f"{path.name} was computed for different weights"
            elif stats.means.shape != (len(bundle.labels), bundle.config.dim):
                found = None, f"{path.name} does not fit this model's classes and width"
            else:
                found = stats, ""
    _CACHE[bundle.model] = found
    return found


def assess(bundle, feature: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> Novelty:
    """Novelty of one input from the CLS feature (D,), the logits (K,) and the model input (C, H, W) of
    a pass already made (see `cls_features`), so the app needs no second model pass."""
    stats, why_not = load_stats(bundle)
    if stats is not None and tuple(x.shape[-2:]) != tuple(bundle.preprocess.image_size):
        stats, why_not = None, "the statistics hold for the training size, not this input size"
    if stats is None:
        energy = -float(torch.logsumexp(logits.float().cpu(), -1))
        return Novelty(score=energy, flag=None, threshold=None, method="energy", percentile=None,
                       parts={"energy": energy},
                       reason=f"Unknown whether this image is like the training data: {why_not}. Its energy "
                              f"score {energy:.2f} (higher is less familiar) has no calibrated threshold.")
    feature_z, pixel_z = stats.standardise(stats.distances(feature.reshape(1, -1).cpu(), x[None].cpu()))[0].tolist()
    score = feature_z + pixel_z
    percentile, flag = stats.percentile(score), score > stats.threshold
    parts = {"model feature distance": feature_z, "image reconstruction error": pixel_z}
    detail = (f"the model's feature distance is {feature_z:+.1f} and the image's reconstruction error "
              f"{pixel_z:+.1f} standard deviations from their averages on held-out training images")
    if flag:
        reason = (f"This image is unlike the training data (score {score:.1f}, above the threshold "
                  f"{stats.threshold:.1f} that {stats.quantile:.0%} of held-out training images stay under): "
                  f"{detail}. Treat the prediction with suspicion.")
    else:
        reason = (f"This image resembles the training data (score {score:.1f}, under the threshold "
                  f"{stats.threshold:.1f}; {percentile:.0f}% of held-out training images score lower): {detail}.")
    return Novelty(score=score, flag=flag, threshold=stats.threshold, method="mahalanobis+pca",
                   percentile=percentile, parts=parts, reason=reason)


@torch.no_grad()
def novelty(bundle, image) -> Novelty:
    """How unlike the training data a PIL image is, through the same preprocessing as a prediction."""
    x = bundle.preprocess(image)
    with cls_features(bundle.model) as recorded:
        logits = bundle.model(x[None].to(bundle.device))
    return assess(bundle, recorded[-1][0], logits[0], x)


@torch.no_grad()
def scores(bundle, inputs: torch.Tensor, progress: Callable[[float], None] | None = None,
           check: Callable[[], None] | None = None) -> tuple[torch.Tensor, torch.Tensor, NoveltyStats | None]:
    """Novelty scores (N,) and logits (N, K) of normalised inputs (N, C, H, W), with the statistics used
    (None: the energy fallback)."""
    feats, logits = features(bundle, inputs, progress=progress, check=check)
    stats, _ = load_stats(bundle)
    if stats is None:
        return -torch.logsumexp(logits, -1), logits, None
    return stats.score(feats, inputs), logits, stats


def main(argv=None) -> None:
    from .checkpoint import CheckpointError, load_checkpoint
    from .data import DatasetError, load_fashion_mnist, load_image_folder

    p = argparse.ArgumentParser(prog="python -m rvt.novelty", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx files")
    p.add_argument("--image-folder", type=Path, help="the training images as root/<class>/<image> instead")
    p.add_argument("--quantile", type=float, default=0.98, help="held-out quantile for the threshold")
    p.add_argument("--val-fraction", type=float, default=0.1, help="as in rvt.train: the held-out share")
    p.add_argument("--seed", type=int, default=0, help="as in rvt.train: fixes the held-out split")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    try:
        bundle = load_checkpoint(args.checkpoint, args.device)
        if args.image_folder:
            images, labels, classes = load_image_folder(args.image_folder, bundle.preprocess)
            if classes != bundle.labels:
                raise SystemExit(f"error: folder classes {classes} differ from the checkpoint's {bundle.labels}")
        else:
            images, labels = load_fashion_mnist("train", args.data_root)
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None
    # The training script's own held-out split, so the threshold is set on images the model never fitted.
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    n_val = int(len(images) * args.val_fraction)
    inputs = bundle.preprocess.normalize(images)
    with tqdm(total=1.0, desc="features", bar_format="{l_bar}{bar}| {elapsed}") as bar:
        feats, _ = features(bundle, inputs, progress=lambda fraction: bar.update(fraction - bar.n))
    train, heldout = order[n_val:], order[:n_val]
    stats = fit(bundle, feats[train], inputs[train], labels[train], feats[heldout], inputs[heldout], args.quantile)
    path = stats.save(stats_path(args.checkpoint))
    print(json.dumps({"written": str(path), "threshold": stats.threshold, "quantile": stats.quantile}))


if __name__ == "__main__":
    main()

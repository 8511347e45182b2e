"""Train an RvT: `python -m rvt.train --out runs/fmnist` (Fashion-MNIST), `--image-folder PATH`,
`--labels-csv DIR/labels.csv` (as `python -m rvt.scenes` writes) or `--scenes N` (generated scenes).

Seeded and resumable: every epoch writes `last.pt` (weights, optimiser, schedule position and RNG
state, so `--resume` continues exactly where it stopped) and, when validation accuracy improves,
`best.safetensors` in the project's checkpoint format. Validation is a split held out of the
training data (for `--scenes`, its own scene set of seed SCENE_SEED + 1); a test split is never
looked at here. `--augment` picks label-safe augmentation: a horizontal flip would swap the scene
task's left/right labels, so scenes train with `shift` or `none`.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import fields
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from .checkpoint import load_checkpoint, save_checkpoint
from .data import FASHION_MNIST_LABELS, channel_stats, load_fashion_mnist, load_image_folder, load_labels_csv, to_unit
from .device import pick_device
from .evaluate import confusion_matrix
from .model import RvT, RvTConfig
from .preprocess import Preprocess
from .scenes import LABELS as SCENE_LABELS
from .scenes import make_scenes, scene_tensors

AUGMENTS = ("shift-flip", "shift", "none")  # shift-flip suits Fashion-MNIST; flips break left/right labels


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m rvt.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="run folder for last.pt, best.safetensors, log.jsonl")
    p.add_argument("--image-folder", type=Path, help="train on root/<class>/<image> instead of Fashion-MNIST")
    p.add_argument("--labels-csv", type=Path, help="train on a `file,label` CSV, files relative to its folder")
    p.add_argument("--scenes", type=int, help="train on N generated scenes (rvt.scenes) at --image-size")
    p.add_argument("--scene-seed", type=int, default=0,
                   help="scene set of the training data; validation uses SCENE_SEED + 1 (keep tests on others)")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx files")
    p.add_argument("--augment", choices=AUGMENTS, default="shift-flip",
                   help="random shift by up to 2 px, plus horizontal flip for shift-flip")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--limit", type=int, help="use only the first N training images (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument("--init", type=Path, help="start from the weights of this checkpoint (fine-tuning; fresh optimiser)")
    p.add_argument("--stop-after-epoch", type=int, help="stop after this epoch (resume later to finish the schedule)")
    defaults = RvTConfig()
    for f in fields(RvTConfig):
        if f.name in ("num_classes", "channels"):
            continue  # taken from the data
        flag = "--" + f.name.replace("_", "-")
        if f.type in ("bool", bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=getattr(defaults, f.name))
        else:
            p.add_argument(flag, type=type(getattr(defaults, f.name)), default=getattr(defaults, f.name))
    return p.parse_args(argv)


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 2, flip: bool = True) -> torch.Tensor:
    """Random translation by up to `pad` pixels (zero fill) and, if `flip`, random horizontal flip, per sample."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=gen).tolist()
    out = torch.stack([padded[i, :, y:y + h, xx:xx + w] for i, (y, xx) in enumerate(zip(dy, dx))])
    if not flip:
        return out
    flipped = torch.rand(b, generator=gen) < 0.5
    return torch.where(flipped[:, None, None, None], out.flip(-1), out)


def augmentation(name: str):
    """The named augmentation as a function of (batch, generator)."""
    if name == "none":
        return lambda x, _gen: x
    return lambda x, gen: augment(x, gen, flip=name == "shift-flip")


def lr_factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def accuracy(model: RvT, images: torch.Tensor, labels: torch.Tensor, normalize, device, num_classes: int) -> float:
    model.eval()
    matrix = confusion_matrix(model, images, labels, normalize, device, num_classes)
    return float(matrix.trace() / matrix.sum())


def scene_preprocess(size: tuple[int, int]) -> Preprocess:
    """Scenes are RGB as drawn: no inversion, no content crop (stretch is the identity at the training size)."""
    return Preprocess(image_size=size, channels=3, mean=[0, 0, 0], std=[1, 1, 1], invert="never", fit="stretch")


def load_data(args) -> tuple[torch.Tensor, torch.Tensor, list[str], Preprocess, tuple | None]:
    """-> images (N, C, H, W) float in [0, 1] or uint8, labels, classes, preprocessing, and a
    separate validation set (images, labels) or None to hold one out of the training data."""
    validation = None
    size = (args.image_size, args.image_size)
    if args.scenes:
        def generate(count, seed, what):
            with tqdm(total=count, desc=what, leave=False) as bar:
                return scene_tensors(make_scenes(count, seed, size, progress=lambda f: bar.update(
                    round(f * count) - bar.n)))
        images, labels = generate(args.scenes, args.scene_seed, "training scenes")
        validation = generate(max(1, int(args.scenes * args.val_fraction)), args.scene_seed + 1, "validation scenes")
        classes, preprocess = list(SCENE_LABELS), scene_preprocess(size)
    elif args.labels_csv:
        preprocess = scene_preprocess(size)
        images, labels, classes = load_labels_csv(args.labels_csv, preprocess)
    elif args.image_folder:
        preprocess = Preprocess(image_size=size, channels=3, mean=[0, 0, 0], std=[1, 1, 1], invert="never", fit="pad")
        images, labels, classes = load_image_folder(args.image_folder, preprocess)
    else:
        images, labels = load_fashion_mnist("train", args.data_root)
        classes, preprocess = FASHION_MNIST_LABELS, Preprocess()
    if args.limit:
        images, labels = images[:args.limit], labels[:args.limit]
    # Normalisation statistics of the training data itself, stored with the checkpoint.
    preprocess.mean, preprocess.std = channel_stats(images)
    return images, labels, classes, preprocess, validation


def train(args) -> Path:
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    device = pick_device(args.device)
    images, labels, classes, preprocess, validation = load_data(args)

    # Held-out validation split, fixed by the seed (independent of the training RNG stream).
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(args.seed))
    n_val = int(len(images) * args.val_fraction) if validation is None else 0
    val_idx, train_idx = order[:n_val], order[n_val:]
    val_images, val_labels = (images[val_idx], labels[val_idx]) if validation is None else validation
    val_images, n_val = to_unit(val_images), len(val_images)

    config = RvTConfig(**{f.name: getattr(args, f.name) for f in fields(RvTConfig)
                          if f.name not in ("num_classes", "channels")},
                       num_classes=len(classes), channels=images.shape[1])
    model = RvT.from_config(config).to(device)
    if args.init:
        start = load_checkpoint(args.init, "cpu")
        if start.config != config:
            raise SystemExit(f"--init: {args.init} has config {start.config}, this run asks for {config}")
        model.load_state_dict(start.model.state_dict())
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or n == "cls_token"]
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and n != "cls_token"]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr)
    steps_per_epoch = math.ceil(len(train_idx) / args.batch_size)
    total, warmup = steps_per_epoch * args.epochs, int(steps_per_epoch * args.warmup_epochs)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup, total))
    gen = torch.Generator().manual_seed(args.seed)
    start_epoch, best_acc = 0, -1.0

    last = args.out / "last.pt"
    if args.resume:
        if not last.is_file():
            raise SystemExit(f"--resume: {last} does not exist")
        state = torch.load(last, map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        start_epoch, best_acc = state["epoch"] + 1, state["best_acc"]

    normalize, augment_batch = preprocess.normalize, augmentation(args.augment)
    started = time.time()
    for epoch in range(start_epoch, args.epochs):
        model.train()
        perm = train_idx[torch.randperm(len(train_idx), generator=gen)]
        bar = tqdm(range(0, len(perm), args.batch_size), desc=f"epoch {epoch + 1}/{args.epochs}", leave=False)
        loss_sum = 0.0
        for i in bar:
            idx = perm[i:i + args.batch_size]
            x = normalize(augment_batch(to_unit(images[idx]), gen)).to(device)
            loss = F.cross_entropy(model(x), labels[idx].to(device), label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.3f}")
        train_loss = loss_sum / len(perm)
        val_acc = accuracy(model, val_images, val_labels, normalize, device, len(classes)) if n_val else float("nan")
        record = {"epoch": epoch + 1, "train_loss": train_loss, "val_acc": val_acc,
                  "lr": scheduler.get_last_lr()[0], "seconds": round(time.time() - started, 1)}
        tqdm.write(json.dumps(record))
        with (args.out / "log.jsonl").open("a") as f:
            f.write(json.dumps(record) + "\n")
        if not n_val or val_acc > best_acc:
            best_acc = val_acc
            save_checkpoint(args.out / "best.safetensors", model, classes, preprocess,
                            training={"epoch": epoch + 1, "val_acc": val_acc, "args": _jsonable(args)})
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "generator": gen.get_state(),
                    "epoch": epoch, "best_acc": best_acc}, last)
        if args.stop_after_epoch and epoch + 1 >= args.stop_after_epoch:
            break
    return args.out / "best.safetensors"


def _jsonable(args) -> dict:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"best checkpoint: {train(args)}")


if __name__ == "__main__":
    main()

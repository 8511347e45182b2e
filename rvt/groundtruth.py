"""Explanations scored against the truth of generated scenes (rvt.scenes), as CLEVR-XAI does.

Two measures per relevance map (Arras et al. 2022, "CLEVR-XAI"), against the union of the key
objects' masks:
  - relevance mass accuracy: the share of positive relevance that falls inside the mask;
  - relevance rank accuracy: of the K most relevant pixels (K = mask size), the share inside the
    mask; ties at the K-th value count by the share of tied pixels inside (random tie-breaking's
    expectation), so patch-level maps, blocky once upsampled, are scored fairly.
The maps are the faithfulness scorecard's (`rvt.faithfulness.methods.explain`, same method names),
for the predicted class. Patch-level maps (attention, rollout, the random floor) are spread over
their patch's pixels; pixel maps are summed over channels (by magnitude for gradient methods).

Also: per-head attention mass on the key objects over a batch of scenes, and the accuracy when
the most object-focused heads are silenced (rvt.intervene).

`python -m rvt.groundtruth --checkpoint A.safetensors [B ...] --count 200` prints the accuracy and
relevance tables; `--heads` adds the per-head table and the silencing what-if.
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .capture import capture
from .checkpoint import Bundle, CheckpointError, load_checkpoint
from .faithfulness.methods import ALL_METHODS, ATTENTION_METHODS, MAGNITUDE, RANDOM, MapSettings, explain
from .grid import patch_grid
from .intervene import intervene
from .scenes import BASE, Scene, make_scenes, scene_tensors

KEYS = ("red", "blue")
METHODS = ALL_METHODS  # the faithfulness scorecard's list, by the same names
PATCH_METHODS = frozenset({*ATTENTION_METHODS, RANDOM})
TEST_SEED = 2  # the trainer uses SCENE_SEED 0 (training) and 1 (validation): 2 is a fresh set


def key_mask(masks: dict[str, np.ndarray], keys: tuple[str, ...] = KEYS) -> np.ndarray:
    """(H, W) bool union of the key objects' masks."""
    missing = [k for k in keys if k not in masks]
    if missing:
        raise ValueError(f"masks {missing} missing; the scene has {sorted(masks)}")
    return np.logical_or.reduce([np.asarray(masks[k], dtype=bool) for k in keys])


def to_pixels(relevance, size: tuple[int, int]) -> np.ndarray:
    """A relevance map (h, w) -> (H, W) float64: each patch's value on each of its pixels."""
    from viz.render import upsample

    values = np.asarray(relevance, dtype=np.float64)
    if values.ndim != 2:
        raise ValueError(f"expected a 2-D relevance map, got shape {values.shape}")
    if size[0] % values.shape[0] or size[1] % values.shape[1]:
        raise ValueError(f"a {values.shape[0]}x{values.shape[1]} map does not tile a {size[0]}x{size[1]} image evenly")
    return upsample(values, size)


def _checked(relevance, mask) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask, dtype=bool)
    relevance = to_pixels(relevance, mask.shape)
    if not np.isfinite(relevance).all():
        raise ValueError("the relevance map holds NaN or infinite values")
    if not mask.any():
        raise ValueError("the mask is empty: nothing to score against")
    return relevance, mask


def mass_accuracy(relevance, mask) -> float:
    """Share of positive relevance inside `mask` (H, W); `relevance` is (H, W) or a patch map. 0 if none."""
    relevance, mask = _checked(relevance, mask)
    positive = np.clip(relevance, 0, None)
    total = positive.sum()
    return float(positive[mask].sum() / total) if total > 0 else 0.0


def rank_accuracy(relevance, mask) -> float:
    """Share of the K = |mask| most relevant pixels that lie inside `mask`, ties shared out evenly."""
    relevance, mask = _checked(relevance, mask)
    values, inside = relevance.ravel(), mask.ravel()
    k = int(inside.sum())
    kth = np.partition(values, values.size - k)[values.size - k]  # the K-th largest value
    above, tied = values > kth, values == kth
    hits = inside[above].sum() + (k - above.sum()) * inside[tied].mean()
    return float(hits / k)


def _inputs(bundle: Bundle, scenes: list[Scene]) -> torch.Tensor:
    """Scenes -> normalised model input (B, 3, H, W), exactly what bundle.preprocess gives per image."""
    images, _ = scene_tensors(scenes, bundle.labels)
    return bundle.preprocess.normalize(images.float() / 255.0)


def pixel_relevance(explanation: torch.Tensor, method: str) -> np.ndarray:
    """One map of `explain` ((h, w) per patch, or (C, H, W) per pixel) -> a 2-D map to score: pixel
    maps are summed over channels, by magnitude for gradient methods (the scorecard's MAGNITUDE)."""
    values = explanation.detach().float().cpu()
    if values.dim() == 3 and method not in PATCH_METHODS:
        values = (values.abs() if method in MAGNITUDE else values).sum(0)
    return values.numpy()


def relevance_maps(bundle: Bundle, scenes: list[Scene], methods: tuple[str, ...] = METHODS,
                   targets: torch.Tensor | None = None, settings: MapSettings = MapSettings(),
                   check: Callable[[], None] | None = None) -> list[dict[str, np.ndarray]]:
    """Per scene, {method: 2-D relevance map} from the faithfulness scorecard's `explain` (patch grid
    for attention methods and the random floor, pixels for captum's); `targets` default to the
    model's predictions."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {', '.join(METHODS)}")
    x = _inputs(bundle, scenes).to(bundle.device)
    if targets is None:
        with torch.no_grad():
            targets = bundle.model(x).argmax(-1).cpu()
    out = []
    for i in range(len(scenes)):
        maps = explain(bundle.model, x[i:i + 1], int(targets[i]), bundle.preprocess, methods, settings, check=check)
        out.append({m: pixel_relevance(maps[m][0], m) for m in methods})
    return out


def score_scene(relevance, scene: Scene) -> dict[str, float]:
    """{'mass': ..., 'rank': ...} of one map against the scene's key objects."""
    mask = key_mask(scene.masks)
    return {"mass": mass_accuracy(relevance, mask), "rank": rank_accuracy(relevance, mask)}


def score_methods(bundle: Bundle, scenes: list[Scene], methods: tuple[str, ...] = METHODS,
                  progress: Callable[[float], None] | None = None,
                  check: Callable[[], None] | None = None) -> dict[str, dict[str, float]]:
    """Mean mass and rank accuracy per method over `scenes`, plus the key objects' area share
    (what a uniform map would score on both). One scene works too: the app's per-scene scores."""
    sums = {m: {"mass": 0.0, "rank": 0.0} for m in methods}
    for done, scene in enumerate(scenes):
        for method, relevance in relevance_maps(bundle, [scene], methods, check=check)[0].items():
            for name, value in score_scene(relevance, scene).items():
                sums[method][name] += value
        if progress:
            progress((done + 1) / len(scenes))
    result = {m: {k: v / len(scenes) for k, v in s.items()} for m, s in sums.items()}
    share = float(np.mean([key_mask(s.masks).mean() for s in scenes]))
    result["uniform map"] = {"mass": share, "rank": share}
    return result


@torch.no_grad()
def accuracy(bundle: Bundle, scenes: list[Scene], heads_off: dict[int, list[int]] | None = None,
             batch: int = 250) -> float:
    """Top-1 accuracy on `scenes` (labels by name, so any class order works), optionally with heads silenced."""
    _, labels = scene_tensors(scenes, bundle.labels)
    correct = 0
    with intervene(bundle.model, heads_off=heads_off):
        for i in range(0, len(scenes), batch):
            x = _inputs(bundle, scenes[i:i + batch]).to(bundle.device)
            correct += int((bundle.model(x).argmax(-1).cpu() == labels[i:i + batch]).sum())
    return correct / len(scenes)


def patch_coverage(mask: np.ndarray, patch_size: int) -> np.ndarray:
    """(H, W) bool -> (h*w,) share of each patch's pixels inside the mask, row-major like the tokens."""
    h, w = patch_grid(mask.shape, patch_size)
    blocks = np.asarray(mask, dtype=np.float64).reshape(h, patch_size, w, patch_size)
    return blocks.mean(axis=(1, 3)).ravel()


@torch.no_grad()
def head_object_mass(bundle: Bundle, scenes: list[Scene], batch: int = 100,
                     check: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
    """Per-head attention mass on the key objects' patches (weighted by how much of each patch they
    cover), averaged over `scenes`: {'cls': (L, H) from the CLS query, 'patches': (L, H) mean over
    patch queries, 'uniform': the same mass for uniform attention, a scalar array}."""
    cls_sum = patch_sum = uniform = 0.0
    for i in range(0, len(scenes), batch):
        if check:
            check()
        chunk = scenes[i:i + batch]
        cover = torch.from_numpy(np.stack([patch_coverage(key_mask(s.masks), bundle.config.patch_size)
                                           for s in chunk])).float()  # (B, N-1)
        with capture(bundle.model) as trace:
            bundle.model(_inputs(bundle, chunk).to(bundle.device))
        attention = trace.attention.float().cpu()[..., 1:]  # (L, B, H, N, N-1): attention on patches only
        on_keys = torch.einsum("lbhqn,bn->lbhq", attention, cover)
        cls_sum = cls_sum + on_keys[..., 0].sum(1)
        patch_sum = patch_sum + on_keys[..., 1:].mean(-1).sum(1)
        uniform += float(cover.sum(1).sum()) / attention.shape[-2]  # uniform over all N tokens, CLS included
    n = len(scenes)
    return {"cls": (cls_sum / n).numpy(), "patches": (patch_sum / n).numpy(), "uniform": np.array(uniform / n)}


def top_heads(mass: np.ndarray, k: int) -> dict[int, list[int]]:
    """The k heads with the largest mass, as intervene's heads_off {layer: [heads]}."""
    order = np.argsort(-mass, axis=None)[:k]
    chosen: dict[int, list[int]] = {}
    for flat in order:
        layer, head = np.unravel_index(flat, mass.shape)
        chosen.setdefault(int(layer), []).append(int(head))
    return chosen


def silencing(bundle: Bundle, scenes: list[Scene], mass: np.ndarray, k: int, controls: int = 5,
              seed: int = 0) -> dict[str, float]:
    """Accuracy with all heads, without the k most object-focused heads, without the k least, and
    without k random heads (mean over `controls` draws)."""
    rng = np.random.default_rng(seed)
    random_acc = [accuracy(bundle, scenes, top_heads(rng.permutation(mass.size).reshape(mass.shape).astype(float), k))
                  for _ in range(controls)]
    return {"all heads": accuracy(bundle, scenes), f"top {k} off": accuracy(bundle, scenes, top_heads(mass, k)),
            f"bottom {k} off": accuracy(bundle, scenes, top_heads(-mass, k)),
            f"random {k} off (mean of {controls})": float(np.mean(random_acc))}


def overview(bundles: dict[str, Bundle], scenes: list[Scene], method: str = "Gradient rollout"):
    """A PIL image: per scene (rows) the scene, its key-object mask, and each model's `method` map
    with its mass / rank accuracy and prediction."""
    from viz.mosaic import tile_grid
    from viz.render import enlarge, overlay

    tiles, labels = [], []
    for scene in scenes:
        mask = key_mask(scene.masks)
        tiles += [enlarge(scene.image, 112), enlarge(np.repeat(mask[..., None] * 255, 3, -1).astype(np.uint8), 112)]
        labels += [scene.label.split()[1], "key objects"]
        for bundle in bundles.values():
            relevance = relevance_maps(bundle, [scene], (method,))[0][method]
            with torch.no_grad():
                predicted = bundle.labels[int(bundle.model(_inputs(bundle, [scene])).argmax())]
            score = score_scene(relevance, scene)
            tiles.append(enlarge(overlay(scene.image, relevance), 112))
            labels.append(f"{predicted.split()[1]} {score['mass']:.2f} / {score['rank']:.2f}")
    return tile_grid(tiles, 2 + len(bundles), labels=labels, col_labels=["red ... blue", "truth", *bundles],
                     title=f"{method}: prediction, mass / rank accuracy on the key objects")


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def resolution_sets(count: int, seed: int, scales: list[float], base: tuple[int, int] = BASE) -> dict[str, list[Scene]]:
    """'zoom 1.5x' / 'extend 1.5x' -> scenes rendered natively at that size (sides rounded to 4 px)."""
    sets = {}
    for scale in scales:
        size = tuple(int(round(s * scale / 4)) * 4 for s in base)
        for mode in ("zoom", "extend"):
            try:
                sets[f"{mode} {scale:g}x ({size[0]}x{size[1]})"] = make_scenes(count, seed, size, mode, base)
            except ValueError as e:  # an extended canvas too small for the key objects
                tqdm.write(f"skipping {mode} {scale:g}x: {e}")
    return sets


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rvt.groundtruth", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, nargs="+", required=True)
    p.add_argument("--count", type=int, default=200, help="scenes per measurement")
    p.add_argument("--seed", type=int, default=TEST_SEED, help="scene set (keep it apart from the training seeds)")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS, metavar="METHOD")
    p.add_argument("--scales", type=float, nargs="*", default=[0.5, 0.75, 1.0, 1.5, 2.0],
                   help="resolutions for the accuracy table, as multiples of the training size")
    p.add_argument("--accuracy-count", type=int, default=1000, help="scenes per resolution in the accuracy table")
    p.add_argument("--figure", type=Path, help="also save an overview image of a few scenes and maps here")
    p.add_argument("--heads", type=int, default=0, metavar="K", help="also per-head mass and silencing the top K heads")
    args = p.parse_args(argv)
    try:
        bundles = {path.stem: load_checkpoint(path, "cpu") for path in args.checkpoint}
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    base = next(iter(bundles.values())).preprocess.image_size

    if args.scales:
        sets = resolution_sets(args.accuracy_count, args.seed, args.scales, base)
        rows = [["scenes", *bundles]]
        for name, scenes in tqdm(sets.items(), desc="accuracy"):
            rows.append([name, *(f"{accuracy(b, scenes):.1%}" for b in bundles.values())])
        print(f"\nTop-1 accuracy, {args.accuracy_count} scenes of seed {args.seed} per row\n{_table(rows)}")

    scenes = make_scenes(args.count, args.seed, base)
    rows = [["method", *(f"{n} mass" for n in bundles), *(f"{n} rank" for n in bundles)]]
    results = {}
    for name, bundle in bundles.items():
        with tqdm(total=1.0, desc=f"relevance {name}") as bar:
            results[name] = score_methods(bundle, scenes, tuple(args.methods),
                                          progress=lambda f: bar.update(f - bar.n))
    for method in [*args.methods, "uniform map"]:
        rows.append([method, *(f"{results[n][method]['mass']:.3f}" for n in bundles),
                     *(f"{results[n][method]['rank']:.3f}" for n in bundles)])
    print(f"\nRelevance mass / rank accuracy on the key objects, {args.count} scenes, predicted class\n{_table(rows)}")

    if args.figure:
        method = args.methods[0] if len(args.methods) == 1 else "Gradient rollout"
        overview(bundles, scenes[:6], method).save(args.figure)
        print(f"wrote {args.figure}")

    held_out = make_scenes(args.accuracy_count, args.seed, base) if args.heads else []
    for name, bundle in bundles.items() if args.heads else ():
        mass = head_object_mass(bundle, scenes)
        print(f"\n{name}: per-head attention mass on the key objects (uniform attention: {float(mass['uniform']):.3f})")
        for kind in ("cls", "patches"):
            rows = [["layer", *(f"head {h}" for h in range(mass[kind].shape[1]))]]
            rows += [[str(i), *(f"{v:.3f}" for v in row)] for i, row in enumerate(mass[kind])]
            print(f"{'CLS query' if kind == 'cls' else 'mean over patch queries'}\n{_table(rows)}")
            what_if = silencing(bundle, held_out, mass[kind], args.heads)
            print(f"silencing by {kind} mass, heads off {top_heads(mass[kind], args.heads)}: "
                  + ", ".join(f"{k} {v:.1%}" for k, v in what_if.items()))


if __name__ == "__main__":
    main()

"""Synthetic scenes with ground truth: a red and a blue object whose relation is the label.

A scene is an explicit, JSON-serialisable `SceneSpec` (canvas size in scene units, the two key
objects, a list of distractors, background and noise settings), so an editor can move objects and
add or remove distractors, then `render_scene(spec, size)` draws it natively at any (H, W) with
one boolean mask per object. The label is where the red object sits relative to the blue one
(`LABELS`), decided by the larger of the two centre offsets; `random_spec` draws offsets where
that axis dominates clearly (the minor offset is at most `MINOR_RATIO` of the major one).

Two ways to change resolution: *zoom* renders the same spec larger (objects grow with the image),
*extend* draws a spec on a larger canvas (objects keep their size in pixels).

CLI: `python -m rvt.scenes --out DIR --count N --seed S --size H W [--mode zoom|extend]` writes
DIR/00000.png ..., DIR/masks/00000.png (0 background, 1 red, 2 blue, 3+ distractors),
DIR/scenes.jsonl (the specs) and DIR/labels.csv (`file,label`, files relative to DIR).
"""
from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from tqdm import tqdm

LABELS = ["red left of blue", "red right of blue", "red above blue", "red below blue"]
SHAPES = ("square", "circle", "triangle", "diamond")
RED, BLUE = (220, 40, 40), (40, 70, 230)
DISTRACTOR_COLOURS = ((40, 190, 60), (225, 205, 40), (225, 225, 225), (30, 195, 195))  # green, yellow, white, cyan
BASE = (32, 32)  # (H, W) of the canvas the checkpoints were trained on, in scene units
OBJECT_SIZE = (5.0, 7.5)  # side / diameter range in scene units: 1-2 patches of 4 px at the base size
KEY_OFFSET = (9.0, 20.0)  # major-axis distance between the key objects' centres: always separate patches
MINOR_RATIO = 0.4  # minor offset <= 0.4 x major: the relation is never a near-diagonal judgement call
DISTRACTORS = (1, 4)  # per base canvas area; scaled with the area when the canvas is extended
SUPERSAMPLE = 4  # shapes are drawn at 4x and box-filtered: antialiased edges at every size


@dataclass
class SceneObject:
    shape: str  # one of SHAPES
    colour: tuple[int, int, int]  # RGB 0..255
    x: float  # centre, scene units from the left edge
    y: float  # centre, scene units from the top edge
    size: float  # side (square, triangle, diamond) or diameter (circle), scene units

    def __post_init__(self):
        if self.shape not in SHAPES:
            raise ValueError(f"shape must be one of {SHAPES}, not {self.shape!r}")
        self.colour = tuple(int(c) for c in self.colour)
        if len(self.colour) != 3 or not all(0 <= c <= 255 for c in self.colour):
            raise ValueError(f"colour must be three integers in 0..255, not {self.colour}")
        if not self.size > 0:
            raise ValueError(f"size must be positive, not {self.size}")


@dataclass
class SceneSpec:
    height: int  # canvas in scene units; rendering at (height, width) pixels is the native size
    width: int
    red: SceneObject
    blue: SceneObject
    distractors: list[SceneObject] = field(default_factory=list)
    background: tuple[int, int, int] = (45, 45, 50)  # RGB of the canvas before texture and noise
    texture: float = 12.0  # amplitude (0..255 scale) of a smooth random texture, one cell per 8 units
    noise: float = 4.0  # std (0..255 scale) of per-pixel Gaussian noise
    seed: int = 0  # seeds the texture and the noise, so a spec renders identically every time

    def __post_init__(self):
        self.height, self.width = int(self.height), int(self.width)
        if self.height < 8 or self.width < 8:
            raise ValueError(f"the canvas must be at least 8x8 scene units, not {self.height}x{self.width}")
        self.background = tuple(int(c) for c in self.background)

    @property
    def label(self) -> str:
        return relation(self.red, self.blue)

    @property
    def objects(self) -> dict[str, SceneObject]:
        """Every object by mask name: 'red', 'blue', 'distractor 0', ..."""
        return {"red": self.red, "blue": self.blue,
                **{f"distractor {i}": d for i, d in enumerate(self.distractors)}}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SceneSpec:
        try:
            objects = {k: SceneObject(**data[k]) for k in ("red", "blue")}
            distractors = [SceneObject(**d) for d in data.get("distractors", [])]
            rest = {k: v for k, v in data.items() if k not in ("red", "blue", "distractors")}
            return cls(**rest, **objects, distractors=distractors)
        except (KeyError, TypeError) as e:
            raise ValueError(f"not a scene spec ({e}); expected the fields of SceneSpec.to_dict()") from None


def relation(red: SceneObject, blue: SceneObject) -> str:
    """The label: the larger centre offset decides (ties go to left/right)."""
    dx, dy = red.x - blue.x, red.y - blue.y
    if abs(dx) >= abs(dy):
        return LABELS[0] if dx < 0 else LABELS[1]
    return LABELS[2] if dy < 0 else LABELS[3]


def _tint(rng: np.random.Generator, colour: tuple[int, int, int], amount: int = 25) -> tuple[int, int, int]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


def _fits(x: float, y: float, size: float, canvas: tuple[int, int], margin: float = 1.0) -> bool:
    r = size / 2 + margin
    return r <= x <= canvas[1] - r and r <= y <= canvas[0] - r


def _clear(obj: SceneObject, others: list[SceneObject], gap: float = 1.5) -> bool:
    """No overlap, even of bounding circles: masks stay whole and centroids stay the objects'."""
    return all(np.hypot(obj.x - o.x, obj.y - o.y) > (obj.size + o.size) / 2 * 1.42 + gap for o in others)


def random_spec(seed: int | tuple[int, ...], canvas: tuple[int, int] = BASE, label: str | None = None) -> SceneSpec:
    """A random scene on a canvas of `canvas` (H, W) scene units, deterministic from `seed`.

    `label` (one of LABELS) fixes the relation; otherwise it is drawn uniformly.
    """
    height, width = (int(s) for s in canvas)
    if min(height, width) < 24:
        raise ValueError(f"random scenes need a canvas of at least 24x24 units, not {height}x{width}")
    if label is not None and label not in LABELS:
        raise ValueError(f"label must be one of {LABELS}, not {label!r}")
    rng = np.random.default_rng(seed)
    target = LABELS.index(label) if label else int(rng.integers(4))
    for _ in range(1000):
        sizes = rng.uniform(*OBJECT_SIZE, 2)
        major = rng.uniform(*KEY_OFFSET)
        minor = rng.uniform(-MINOR_RATIO, MINOR_RATIO) * major
        sign = -1.0 if target in (0, 2) else 1.0
        dx, dy = (sign * major, minor) if target < 2 else (minor, sign * major)
        bx, by = rng.uniform(0, width), rng.uniform(0, height)
        red = SceneObject(str(rng.choice(SHAPES)), _tint(rng, RED), bx + dx, by + dy, float(sizes[0]))
        blue = SceneObject(str(rng.choice(SHAPES)), _tint(rng, BLUE), bx, by, float(sizes[1]))
        if _fits(red.x, red.y, red.size, (height, width)) and _fits(blue.x, blue.y, blue.size, (height, width)):
            break
    else:
        raise ValueError(f"could not place the key objects on a {height}x{width} canvas")
    area = height * width / (BASE[0] * BASE[1])
    count = int(round(rng.integers(DISTRACTORS[0], DISTRACTORS[1] + 1) * area))
    placed: list[SceneObject] = []
    for _ in range(count):
        obj = _distractor(rng, (height, width), [red, blue, *placed])
        placed += [obj] if obj else []
    background = _tint(rng, (45, 45, 50), 15)
    return SceneSpec(height, width, red, blue, placed, background, texture=float(rng.uniform(6, 16)),
                     noise=float(rng.uniform(2, 6)), seed=int(rng.integers(2**31)))


def _distractor(rng: np.random.Generator, canvas: tuple[int, int], others: list[SceneObject],
                tries: int = 50) -> SceneObject | None:
    """A random distractor clear of `others`, or None when `tries` random spots all collide."""
    for _ in range(tries):
        size = float(rng.uniform(*OBJECT_SIZE))
        obj = SceneObject(str(rng.choice(SHAPES)), _tint(rng, DISTRACTOR_COLOURS[rng.integers(4)]),
                          float(rng.uniform(0, canvas[1])), float(rng.uniform(0, canvas[0])), size)
        if _fits(obj.x, obj.y, size, canvas) and _clear(obj, others):
            return obj
    return None


def add_distractor(spec: SceneSpec, seed: int | tuple[int, ...] = 0) -> SceneSpec:
    """A copy of `spec` with one more random distractor where it touches nothing (the editor's
    'add' button); raises ValueError when the canvas has no free spot left."""
    obj = _distractor(np.random.default_rng(seed), (spec.height, spec.width), list(spec.objects.values()), 500)
    if obj is None:
        raise ValueError("no free spot left for another distractor; remove one or move the objects")
    return replace(spec, distractors=[*spec.distractors, obj])


def centred(spec: SceneSpec, canvas: tuple[int, int]) -> SceneSpec:
    """The same objects, sizes and background on a canvas of `canvas` (H, W) scene units, shifted so the
    old canvas sits in its centre: `extend` for an edited scene (objects keep their pixel size)."""
    dy, dx = (canvas[0] - spec.height) / 2, (canvas[1] - spec.width) / 2
    if dy < 0 or dx < 0:
        raise ValueError(f"a {canvas[0]}x{canvas[1]} canvas cannot hold a {spec.height}x{spec.width} scene")
    moved = [replace(obj, x=obj.x + dx, y=obj.y + dy) for obj in (spec.red, spec.blue, *spec.distractors)]
    return replace(spec, height=int(canvas[0]), width=int(canvas[1]), red=moved[0], blue=moved[1],
                   distractors=moved[2:])


def _polygon(obj: SceneObject, sy: float, sx: float) -> list[tuple[float, float]] | None:
    """Vertices in supersampled pixels, or None for a circle (drawn as an ellipse). Regular shapes
    around (x, y), so each mask's centroid is the object's centre."""
    r = obj.size / 2
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        corners = [(-r, -r), (r, -r), (r, r), (-r, r)]
    else:
        radius, start = (r * 1.25, -90) if obj.shape == "triangle" else (r * 1.3, 0)
        n = 3 if obj.shape == "triangle" else 4
        angles = np.deg2rad(start + 360 / n * np.arange(n))
        corners = [(radius * np.cos(a), radius * np.sin(a)) for a in angles]
    return [((obj.x + cx) * sx, (obj.y + cy) * sy) for cx, cy in corners]


def _coverage(obj: SceneObject, size: tuple[int, int], scale: tuple[float, float]) -> np.ndarray:
    """(H, W) float fraction of each pixel the object covers."""
    h, w = size
    canvas = Image.new("L", (w * SUPERSAMPLE, h * SUPERSAMPLE), 0)
    draw = ImageDraw.Draw(canvas)
    sy, sx = scale[0] * SUPERSAMPLE, scale[1] * SUPERSAMPLE
    vertices = _polygon(obj, sy, sx)
    if vertices is None:
        x, y, r = obj.x * sx, obj.y * sy, obj.size / 2
        draw.ellipse([x - r * sx, y - r * sy, x + r * sx, y + r * sy], fill=255)
    else:
        draw.polygon(vertices, fill=255)
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0


def _background(spec: SceneSpec, size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) float: base colour + a smooth texture fixed in scene units (zoom keeps it) + noise."""
    h, w = size
    cells = rng.uniform(-1, 1, (spec.height // 8 + 2, spec.width // 8 + 2)).astype(np.float32)
    # The cell grid covers the canvas plus one cell: resizing it maps scene units to pixels at any size.
    tex = Image.fromarray(cells).resize((w, h), Image.Resampling.BICUBIC,
                                                  box=(0, 0, spec.width / 8, spec.height / 8))
    texture = np.asarray(tex, dtype=np.float32)[..., None] * spec.texture
    noise = rng.normal(0, spec.noise, (h, w, 3)).astype(np.float32)
    return np.asarray(spec.background, dtype=np.float32) + texture + noise


def render_scene(spec: SceneSpec, size: tuple[int, int] | None = None) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Draw `spec` at `size` (H, W) pixels (default: its own canvas) -> (image (H, W, 3) uint8,
    masks {'red', 'blue', 'distractor i': (H, W) bool}). A size other than the canvas zooms."""
    size = (spec.height, spec.width) if size is None else tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 8:
        raise ValueError(f"size must be (H, W) with both sides at least 8 pixels, not {size}")
    return _render(spec, size)


def _render(spec: SceneSpec, size: tuple[int, int]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    scale = (size[0] / spec.height, size[1] / spec.width)
    rng = np.random.default_rng(spec.seed)
    image = _background(spec, size, rng)
    masks = {}
    # Distractors first: where an edited scene overlaps them, the key objects stay on top.
    for name, obj in reversed(spec.objects.items()):
        alpha = _coverage(obj, size, scale)[..., None]
        image = image * (1 - alpha) + np.asarray(obj.colour, dtype=np.float32) * alpha
        for other in masks.values():
            other &= alpha[..., 0] < 0.5  # masks are what is visible
        masks[name] = alpha[..., 0] >= 0.5
    masks = {name: masks[name] for name in spec.objects}
    return np.clip(image, 0, 255).round().astype(np.uint8), masks


@dataclass
class Scene:
    spec: SceneSpec
    image: np.ndarray  # (H, W, 3) uint8
    masks: dict[str, np.ndarray]  # name -> (H, W) bool

    @property
    def label(self) -> str:
        return self.spec.label

    @classmethod
    def from_spec(cls, spec: SceneSpec, size: tuple[int, int] | None = None) -> Scene:
        """Render `spec` at `size` (default its canvas) into a Scene (image and masks)."""
        return cls(spec, *render_scene(spec, size))


def scene_seed(seed: int, index: int) -> tuple[int, int]:
    """The seed of scene `index` of a set: sets with different seeds share no scene."""
    return (int(seed), int(index))


def make_scene(seed: int | tuple[int, ...], size: tuple[int, int] = BASE, mode: str = "extend",
               base: tuple[int, int] = BASE) -> Scene:
    """One random scene at `size` (H, W) pixels. mode 'extend': a canvas of `size` units (objects keep
    their pixel size); 'zoom': a `base` canvas rendered at `size` (objects scale with the image)."""
    if mode not in ("zoom", "extend"):
        raise ValueError(f"mode must be 'zoom' or 'extend', not {mode!r}")
    return Scene.from_spec(random_spec(seed, size if mode == "extend" else base), size)


def make_scenes(count: int, seed: int, size: tuple[int, int] = BASE, mode: str = "extend",
                base: tuple[int, int] = BASE, progress: Callable[[float], None] | None = None,
                check: Callable[[], None] | None = None) -> list[Scene]:
    """Scenes 0..count-1 of the set `seed` (see `make_scene`)."""
    if count < 1:
        raise ValueError(f"count must be at least 1, not {count}")
    scenes = []
    for i in range(count):
        if check and i % 64 == 0:
            check()
        scenes.append(make_scene(scene_seed(seed, i), size, mode, base))
        if progress and (i % 64 == 63 or i == count - 1):
            progress((i + 1) / count)
    return scenes


def scene_tensors(scenes: list[Scene], labels: list[str] = LABELS) -> tuple[torch.Tensor, torch.Tensor]:
    """-> images (N, 3, H, W) uint8 and class indices (N,) in the order of `labels`."""
    images = torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([labels.index(s.label) for s in scenes])


def write_scenes(out: Path, scenes: list[Scene]) -> Path:
    """Images, index masks, specs and labels.csv into `out`; returns the labels.csv path."""
    out = Path(out)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    digits = max(5, len(str(len(scenes) - 1)))
    with (out / "labels.csv").open("w", newline="") as f, (out / "scenes.jsonl").open("w") as specs:
        writer = csv.writer(f)
        writer.writerow(["file", "label"])
        for i, scene in enumerate(scenes):
            name = f"{i:0{digits}d}.png"
            Image.fromarray(scene.image).save(out / name)
            index = np.zeros(scene.image.shape[:2], dtype=np.uint8)
            for value, mask in enumerate(scene.masks.values(), start=1):
                index[mask] = value
            Image.fromarray(index).save(out / "masks" / name)
            writer.writerow([name, scene.label])
            specs.write(json.dumps({"file": name, **scene.spec.to_dict()}) + "\n")
    return out / "labels.csv"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rvt.scenes", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--count", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, nargs=2, default=list(BASE), metavar=("H", "W"))
    p.add_argument("--mode", choices=("zoom", "extend"), default="extend",
                   help="zoom: the base canvas drawn at SIZE; extend: a canvas of SIZE, objects at base size")
    p.add_argument("--base", type=int, nargs=2, default=list(BASE), metavar=("H", "W"))
    args = p.parse_args(argv)
    bar = tqdm(total=args.count, desc="scenes")
    try:
        scenes = make_scenes(args.count, args.seed, tuple(args.size), args.mode, tuple(args.base),
                             progress=lambda f: bar.update(round(f * args.count) - bar.n))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    bar.close()
    print(f"wrote {write_scenes(args.out, scenes)}")


if __name__ == "__main__":
    main()

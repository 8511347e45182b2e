import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvt import load_checkpoint
from rvt.assets import ASSETS
from rvt.data import load_labels_csv
from rvt.groundtruth import (
    head_object_mass,
    key_mask,
    mass_accuracy,
    patch_coverage,
    rank_accuracy,
    relevance_maps,
    score_scene,
)
from rvt.scenes import (
    LABELS,
    Scene,
    SceneSpec,
    add_distractor,
    make_scene,
    make_scenes,
    random_spec,
    render_scene,
    scene_tensors,
)
from rvt.scenes import main as scenes_main
from rvt.train import scene_preprocess

CHECKPOINTS = sorted(ASSETS.glob("scene_*.safetensors"))


def centroid_label(masks: dict) -> str:
    (ry, rx), (by, bx) = (np.argwhere(masks[k]).mean(0) for k in ("red", "blue"))
    dx, dy = rx - bx, ry - by
    if abs(dx) >= abs(dy):
        return LABELS[0] if dx < 0 else LABELS[1]
    return LABELS[2] if dy < 0 else LABELS[3]


@pytest.mark.parametrize("size,mode", [((32, 32), "extend"), ((48, 80), "extend"), ((16, 16), "zoom"),
                                       ((64, 40), "zoom")])
def test_labels_follow_the_mask_centroids(size, mode):
    scenes = make_scenes(60, 7, size, mode)
    assert {s.label for s in scenes} == set(LABELS)
    for scene in scenes:
        assert scene.image.shape == (*size, 3) and scene.image.dtype == np.uint8
        assert all(m.shape == size and m.any() for k, m in scene.masks.items() if k in ("red", "blue"))
        assert centroid_label(scene.masks) == scene.label
        # The key objects really are red and blue where their masks say so.
        red, blue = (scene.image[scene.masks[k]].astype(int).mean(0) for k in ("red", "blue"))
        assert red[0] > red[2] + 60 and blue[2] > blue[0] + 60


def test_identical_seeds_give_identical_scenes():
    a, b, c = make_scene(3, (40, 56)), make_scene(3, (40, 56)), make_scene(4, (40, 56))
    assert np.array_equal(a.image, b.image) and a.spec == b.spec
    assert all(np.array_equal(a.masks[k], b.masks[k]) for k in a.masks)
    assert not np.array_equal(a.image, c.image)
    # Sets with different seeds share no scene.
    assert not any(np.array_equal(x.image, y.image) for x in make_scenes(20, 0) for y in make_scenes(20, 1))


def test_zoom_keeps_the_scene_and_extend_keeps_object_sizes():
    spec = random_spec(11)
    small, big = render_scene(spec)[1], render_scene(spec, (64, 64))[1]
    assert big["red"].sum() == pytest.approx(4 * small["red"].sum(), rel=0.25)
    extended = make_scene(11, (64, 96), "extend")
    assert extended.spec.height == 64 and extended.spec.width == 96
    assert 5 <= extended.spec.red.size <= 7.5  # scene units are pixels on an extended canvas


def test_spec_round_trip_and_editing():
    spec = random_spec(5)
    again = SceneSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert np.array_equal(render_scene(again)[0], render_scene(spec)[0])
    moved = replace(spec, red=replace(spec.red, x=spec.blue.x + 12, y=spec.blue.y), distractors=[])
    image, masks = render_scene(moved)
    assert moved.label == "red right of blue" == centroid_label(masks)
    assert set(masks) == {"red", "blue"}
    crowded = add_distractor(add_distractor(moved, 1), 2)
    assert len(crowded.distractors) == 2 and crowded.label == moved.label
    scene = Scene.from_spec(crowded)
    assert all(m.any() for m in scene.masks.values())  # each new distractor is visible, none hides another
    assert centroid_label(scene.masks) == moved.label
    with pytest.raises(ValueError, match="shape must be one of"):
        replace(spec.red, shape="star")
    with pytest.raises(ValueError, match="not a scene spec"):
        SceneSpec.from_dict({"height": 32})


def test_cli_writes_labels_csv_with_relative_paths(tmp_path, capsys):
    scenes_main(["--out", str(tmp_path / "set"), "--count", "12", "--seed", "5", "--size", "24", "40"])
    root = tmp_path / "set"
    with (root / "labels.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "label"] and len(rows) == 13
    expected = make_scenes(12, 5, (24, 40))
    for (name, label), scene in zip(rows[1:], expected):
        assert not Path(name).is_absolute() and label == scene.label
        assert np.array_equal(np.asarray(Image.open(root / name)), scene.image)
        index = np.asarray(Image.open(root / "masks" / name))
        assert np.array_equal(index == 1, scene.masks["red"]) and np.array_equal(index == 2, scene.masks["blue"])
    images, labels, classes = load_labels_csv(root / "labels.csv", scene_preprocess((24, 40)), LABELS)
    reference, reference_labels = scene_tensors(expected)
    assert torch.equal(images, reference.float() / 255) and torch.equal(labels, reference_labels)


def test_scores_on_hand_made_maps():
    mask = np.zeros((8, 8), bool)
    mask[2:4, 2:6] = True
    assert mass_accuracy(mask.astype(float), mask) == 1.0 and rank_accuracy(mask.astype(float), mask) == 1.0
    assert mass_accuracy(~mask * 1.0, mask) == 0.0 and rank_accuracy(~mask * 1.0, mask) == 0.0
    uniform = np.ones((8, 8))
    assert mass_accuracy(uniform, mask) == pytest.approx(8 / 64)
    assert rank_accuracy(uniform, mask) == pytest.approx(8 / 64)  # all tied: the expected share
    # A 2x2 patch map spread over 4x4 blocks: the top-left patch holds 4 of the 8 mask pixels.
    patches = np.array([[3.0, 1.0], [0.0, -2.0]])
    assert mass_accuracy(patches, mask) == pytest.approx((4 * 3 + 4 * 1) / (16 * 3 + 16 * 1))
    # Against a brute-force sort when there are no ties.
    rng = np.random.default_rng(0)
    values = rng.normal(size=(8, 8))
    top = np.argsort(-values, axis=None)[:8]
    assert rank_accuracy(values, mask) == pytest.approx(mask.ravel()[top].mean())
    with pytest.raises(ValueError, match="mask is empty"):
        mass_accuracy(values, np.zeros((8, 8), bool))


def test_patch_coverage_and_key_mask():
    scene = make_scene(2)
    cover = patch_coverage(key_mask(scene.masks), 4)
    assert cover.shape == (64,) and cover.sum() * 16 == pytest.approx(key_mask(scene.masks).sum())


@pytest.mark.skipif(not CHECKPOINTS, reason="no scene checkpoints in assets/")
@pytest.mark.parametrize("path", CHECKPOINTS, ids=[p.stem for p in CHECKPOINTS])
def test_scene_checkpoint_loads_and_preprocesses_like_training(path):
    bundle = load_checkpoint(path, "cpu")
    assert bundle.labels == LABELS and bundle.config.channels == 3
    assert path.stat().st_size < 10_000_000
    size = bundle.preprocess.image_size
    scenes = make_scenes(60, 2, size)
    images, labels = scene_tensors(scenes)
    x = bundle.preprocess.normalize(images.float() / 255)
    for i in (0, 1):
        assert torch.equal(bundle.preprocess(Image.fromarray(scenes[i].image)), x[i])
    with torch.no_grad():
        acc = (bundle.model(x).argmax(-1) == labels).float().mean().item()
    if bundle.config.use_rotary:
        assert acc >= 0.9
    elif not bundle.config.use_ds_conv:
        assert acc <= 0.45  # no position information at all: chance is 25%
    maps = relevance_maps(bundle, scenes[:4], ("Attention rollout (mean)", "Saliency"))
    assert all(0 <= score_scene(m, s)["mass"] <= 1 for ms, s in zip(maps, scenes) for m in ms.values())
    assert maps[0]["Attention rollout (mean)"].shape == (8, 8) and maps[0]["Saliency"].shape == (32, 32)
    mass = head_object_mass(bundle, scenes[:8])
    assert mass["cls"].shape == (bundle.config.depth, bundle.config.heads)


def test_head_mass_of_uniform_attention_is_the_key_area_share():
    from rvt import RvT
    from rvt.checkpoint import Bundle
    from rvt.groundtruth import top_heads

    torch.manual_seed(0)
    model = RvT(image_size=32, patch_size=4, num_classes=4, dim=16, depth=2, heads=2, mlp_dim=16, channels=3,
                dim_head=8).eval().requires_grad_(False)
    for layer in model.transformer.layers:
        keys, _values = layer[0].to_kv.weight.chunk(2, dim=0)
        keys.zero_()  # k = 0: every score is 0, attention is uniform over all N tokens
    bundle = Bundle(model, LABELS, model.config, scene_preprocess((32, 32)), torch.device("cpu"))
    scenes = make_scenes(6, 0)
    mass = head_object_mass(bundle, scenes, batch=4)
    share = np.mean([patch_coverage(key_mask(s.masks), 4).sum() / 65 for s in scenes])  # 64 patches + CLS
    assert float(mass["uniform"]) == pytest.approx(share)
    assert mass["cls"] == pytest.approx(np.full((2, 2), share)) and mass["patches"] == pytest.approx(mass["cls"])
    assert top_heads(np.array([[0.1, 0.5], [0.3, 0.2]]), 2) == {0: [1], 1: [0]}


def test_groundtruth_cli_prints_both_tables(capsys, tmp_path):
    from rvt.groundtruth import main as groundtruth_main
    if not CHECKPOINTS:
        pytest.skip("no scene checkpoints in assets/")
    groundtruth_main(["--checkpoint", str(CHECKPOINTS[0]), "--count", "2", "--accuracy-count", "4", "--scales", "1",
                      "--methods", "Attention rollout (mean)", "--heads", "1", "--figure", str(tmp_path / "o.png")])
    out = capsys.readouterr().out
    assert "| zoom 1x (32x32)" in out and "| Attention rollout (mean)" in out and "| uniform map" in out
    assert "top 1 off" in out and Image.open(tmp_path / "o.png").width > 300

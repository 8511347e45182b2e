import gzip
import json
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvt import Preprocess, load_checkpoint
from rvt.data import DatasetError, load_fashion_mnist, load_image_folder, read_idx
from rvt.train import main as train_main

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "rvt_fashion_mnist.safetensors"


def write_idx(path: Path, array: np.ndarray) -> None:
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture(scope="module")
def tiny_fmnist(tmp_path_factory):
    """Two separable classes (a bright top half vs a bright bottom half) plus noise, in idx form."""
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 192), ("t10k", 32)):
        labels = rng.integers(0, 2, n)
        images = rng.integers(0, 60, (n, 28, 28))
        for i, y in enumerate(labels):
            images[i, :14] += 150 * (y == 0)
            images[i, 14:] += 150 * (y == 1)
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels)
    return root


def test_idx_loader(tiny_fmnist):
    images, labels = load_fashion_mnist("train", tiny_fmnist)
    assert images.shape == (192, 1, 28, 28) and labels.shape == (192,)
    assert 0.0 <= images.min() and images.max() <= 1.0
    raw = read_idx(tiny_fmnist / "train-images-idx3-ubyte.gz")
    assert np.allclose(images[5, 0].numpy(), raw[5] / 255.0)


def test_missing_dataset_names_the_install_command(tmp_path):
    with pytest.raises(DatasetError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path)


def test_dataset_location_from_environment(tiny_fmnist, monkeypatch):
    monkeypatch.setenv("RVT_FASHION_MNIST", str(tiny_fmnist))
    assert load_fashion_mnist("test")[0].shape[0] == 32


def test_image_folder_loader(tmp_path):
    for name, colour in (("cats", 40), ("dogs", 200)):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40 + i, 30), (colour, colour, colour)).save(tmp_path / name / f"{i}.png")
        Image.new("RGBA", (16, 16), (colour, 0, 0, 128)).save(tmp_path / name / "alpha.png")
    (tmp_path / "cats" / "readme.txt").write_text("ignored")
    pre = Preprocess(image_size=(16, 16), channels=3, mean=[0, 0, 0], std=[1, 1, 1], invert="never", fit="stretch")
    images, labels, classes = load_image_folder(tmp_path, pre)
    assert classes == ["cats", "dogs"] and images.shape == (8, 3, 16, 16)
    assert labels.tolist() == [0] * 4 + [1] * 4
    (tmp_path / "dogs" / "bad.png").write_text("broken")
    with pytest.raises(DatasetError, match="bad.png: not a readable image"):
        load_image_folder(tmp_path, pre)


TINY = ["--dim", "16", "--depth", "1", "--heads", "2", "--dim-head", "8", "--mlp-dim", "16",
        "--batch-size", "32", "--warmup-epochs", "0.5", "--lr", "3e-3"]


def run(root, out, *extra):
    train_main(["--data-root", str(root), "--out", str(out), *TINY, *extra])
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_short_training_lowers_the_loss_and_writes_a_checkpoint(tiny_fmnist, tmp_path):
    log = run(tiny_fmnist, tmp_path / "run", "--epochs", "4")
    assert log[-1]["train_loss"] < log[0]["train_loss"]
    bundle = load_checkpoint(tmp_path / "run" / "best.safetensors", "cpu")
    assert bundle.config.dim == 16 and len(bundle.labels) == 10
    train_mean = load_fashion_mnist("train", tiny_fmnist)[0][:192].mean().item()
    assert bundle.preprocess.mean[0] == pytest.approx(train_mean, abs=1e-4)


def test_resume_matches_an_uninterrupted_run(tiny_fmnist, tmp_path):
    run(tiny_fmnist, tmp_path / "straight", "--epochs", "3")
    run(tiny_fmnist, tmp_path / "split", "--epochs", "3", "--stop-after-epoch", "1")
    assert torch.load(tmp_path / "split" / "last.pt", weights_only=True)["epoch"] == 0
    log = run(tiny_fmnist, tmp_path / "split", "--epochs", "3", "--resume")
    assert [r["epoch"] for r in log] == [1, 2, 3]
    straight = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)["model"]
    resumed = torch.load(tmp_path / "split" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(straight[k], resumed[k]) for k in straight), "resume must continue exactly"
    with pytest.raises(SystemExit, match="does not exist"):
        train_main(["--data-root", str(tiny_fmnist), "--out", str(tmp_path / "nothing"), *TINY, "--resume"])


def test_fine_tuning_starts_from_a_checkpoint(tiny_fmnist, tmp_path):
    run(tiny_fmnist, tmp_path / "base", "--epochs", "2")
    base = load_checkpoint(tmp_path / "base" / "best.safetensors", "cpu")
    log = run(tiny_fmnist, tmp_path / "tuned", "--epochs", "1", "--lr", "0", "--init",
              str(tmp_path / "base" / "best.safetensors"))
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["model"]
    assert all(torch.equal(tuned[k], v) for k, v in base.model.state_dict().items())  # lr 0: unchanged
    base_log = [json.loads(line) for line in (tmp_path / "base" / "log.jsonl").read_text().splitlines()]
    assert log[0]["val_acc"] == pytest.approx(max(r["val_acc"] for r in base_log))  # best.safetensors
    with pytest.raises(SystemExit, match="--init: .* has config"):
        run(tiny_fmnist, tmp_path / "other", "--epochs", "1", "--dim", "24", "--init",
            str(tmp_path / "base" / "best.safetensors"))


def test_evaluate_cli(tiny_fmnist, tmp_path, capsys):
    from rvt.evaluate import main as evaluate_main
    run(tiny_fmnist, tmp_path / "run", "--epochs", "2")
    evaluate_main(["--checkpoint", str(tmp_path / "run" / "best.safetensors"), "--data-root", str(tiny_fmnist),
                   "--confusion", str(tmp_path / "c.png"), "--json", str(tmp_path / "r.json")])
    result = json.loads((tmp_path / "r.json").read_text())
    matrix = np.array(result["confusion"])
    assert matrix.sum() == 32 and result["accuracy"] == pytest.approx(matrix.trace() / 32)
    assert "top-1 accuracy" in capsys.readouterr().out and Image.open(tmp_path / "c.png").width > 300


def garment(background: int, mode: str = "RGB", size=(60, 90)) -> Image.Image:
    arr = np.full((size[1], size[0]), background, np.uint8)
    h, w = arr.shape
    arr[h // 5: 4 * h // 5, w // 4: 3 * w // 4] = 255 - background
    return Image.fromarray(arr).convert(mode)


@pytest.mark.parametrize("make", [
    lambda: garment(240),                                      # photo on a light background
    lambda: garment(10),                                       # already light on dark
    lambda: garment(240, "P"),                                 # palette
    lambda: garment(240, "CMYK"),
    lambda: Image.fromarray(np.asarray(garment(240, "L")).astype(np.uint16) * 257),  # 16-bit
    lambda: garment(240, size=(4000, 3000)),                   # huge
    lambda: garment(240, size=(8, 9)),                         # tiny
], ids=["light", "dark", "palette", "cmyk", "16bit", "huge", "tiny"])
def test_preprocess_makes_light_items_on_black(make):
    image = make()
    pre = Preprocess()
    unit = pre.to_unit(image)
    assert unit.shape == (1, 28, 28)
    assert unit[0, 0, 0] < 0.1 and unit[0, -1, -1] < 0.1  # background black
    assert unit[0, 14, 14] > 0.9  # item light
    assert torch.allclose(pre(image), pre.normalize(unit))


def test_preprocess_rgba_on_transparent_background():
    arr = np.zeros((50, 40, 4), np.uint8)
    arr[10:40, 10:30] = (30, 30, 30, 255)  # a dark garment, the rest transparent
    unit = Preprocess().to_unit(Image.fromarray(arr, "RGBA"))
    assert unit[0, 0, 0] < 0.1 and unit[0, 14, 14] > 0.7


def test_preprocess_keeps_aspect_with_padding():
    tall = garment(0, size=(20, 80))
    tall = Image.fromarray(np.full((80, 20), 200, np.uint8))
    unit = Preprocess(fit="pad", invert="never").to_unit(tall)
    assert unit[0, :, 14].min() > 0.7  # the item spans the full height
    assert unit[0, 14, :8].max() < 0.05 and unit[0, 14, -8:].max() < 0.05  # padded left and right


@pytest.mark.dataset
def test_bundled_model_on_the_first_1000_test_images():
    try:
        images, labels = load_fashion_mnist("test")
    except DatasetError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Fashion-MNIST not installed (CI installs it)")
    assert BUNDLED.is_file(), "the bundled checkpoint is missing"
    bundle = load_checkpoint(BUNDLED, "cpu")
    assert bundle.config.use_rotary and bundle.config.use_ds_conv and bundle.config.use_glu
    assert bundle.config.image_size // bundle.config.patch_size >= 7
    with torch.no_grad():
        predictions = bundle.model(bundle.preprocess.normalize(images[:1000])).argmax(-1)
    assert (predictions == labels[:1000]).float().mean().item() >= 0.90


def test_bundled_model_reads_the_example_images():
    examples = sorted((BUNDLED.parent / "examples").glob("*.png"))
    assert len(examples) == 10, "one example per class"
    bundle = load_checkpoint(BUNDLED, "cpu")
    right = 0
    for path in examples:
        with Image.open(path) as image:
            logits = bundle.model(bundle.preprocess(image)[None])
        right += int(logits.argmax()) == int(path.stem.split("_")[0])  # names start with the class index
    assert right >= 8


def test_augmentation_without_flip_keeps_left_and_right():
    from rvt.train import augmentation
    x = torch.zeros(64, 3, 16, 16)
    x[..., :, :4] = 1.0  # bright on the left
    gen = torch.Generator().manual_seed(0)
    shifted = augmentation("shift")(x, gen)
    assert (shifted[..., :8].sum((1, 2, 3)) > shifted[..., 8:].sum((1, 2, 3))).all()  # never flipped
    assert not torch.equal(shifted, x)  # but shifted
    flipped = augmentation("shift-flip")(x, gen)
    assert (flipped[..., 8:].sum((1, 2, 3)) > flipped[..., :8].sum((1, 2, 3))).any()
    assert torch.equal(augmentation("none")(x, gen), x)


SCENE_TINY = ["--image-size", "24", "--patch-size", "4", "--epochs", "1", "--augment", "none",
              *TINY]


def test_training_on_generated_scenes_and_on_a_labels_csv(tmp_path):
    from rvt.scenes import LABELS, make_scenes, scene_tensors
    from rvt.scenes import main as scenes_main
    train_main(["--out", str(tmp_path / "gen"), "--scenes", "64", *SCENE_TINY])
    bundle = load_checkpoint(tmp_path / "gen" / "best.safetensors", "cpu")
    assert bundle.labels == LABELS and bundle.config.channels == 3
    pre = bundle.preprocess
    assert (pre.channels, pre.invert, pre.fit, pre.image_size) == (3, "never", "stretch", (24, 24))
    images, _ = scene_tensors(make_scenes(64, 0, (24, 24)))  # the training set: seed 0
    assert pre.mean[0] == pytest.approx((images[:, 0].float() / 255).mean().item(), abs=1e-5)
    scene = make_scenes(1, 1, (24, 24))[0]
    assert torch.equal(pre(Image.fromarray(scene.image)), pre.normalize(scene_tensors([scene])[0].float() / 255)[0])

    scenes_main(["--out", str(tmp_path / "folder"), "--count", "32", "--size", "24", "24"])
    train_main(["--out", str(tmp_path / "csv"), "--labels-csv", str(tmp_path / "folder" / "labels.csv"), *SCENE_TINY])
    bundle = load_checkpoint(tmp_path / "csv" / "best.safetensors", "cpu")
    assert set(bundle.labels) <= set(LABELS) and bundle.preprocess.channels == 3

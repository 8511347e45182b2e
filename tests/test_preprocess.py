"""The user's path: training-format images unchanged, photos found on messy backgrounds, safe decoding."""
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from rvt import Preprocess, load_checkpoint
from rvt.data import FASHION_MNIST_LABELS, DatasetError, load_fashion_mnist
from rvt.photolike import non_garment_set, photo_like_set
from rvt.preprocess import ImageInputError, read_image

BUNDLED = Path(__file__).resolve().parents[1] / "assets" / "rvt_fashion_mnist.safetensors"
PHOTO_FLOOR = 0.82  # the target: within 10 points of the clean 92.10%; measured 87.2% on this seed


def fashion_mnist(split: str):
    try:
        return load_fashion_mnist(split)
    except DatasetError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Fashion-MNIST not installed (CI installs it)")


def as_uint8(images: torch.Tensor) -> np.ndarray:
    return (images[:, 0] * 255).round().byte().numpy()  # (N, 28, 28), exactly the idx file's bytes


@pytest.mark.dataset
def test_every_raw_test_image_passes_through_unchanged():
    images, _ = fashion_mnist("test")
    pre = load_checkpoint(BUNDLED, "cpu").preprocess
    raw = as_uint8(images)
    through = torch.stack([pre(Image.fromarray(pixels)) for pixels in raw])  # the user's path, PIL images
    assert torch.equal(through, pre.normalize(images))  # bit for bit what rvt.evaluate feeds the model


@pytest.mark.dataset
def test_examples_are_the_raw_test_images():
    images, labels = fashion_mnist("test")
    examples = sorted((BUNDLED.parent / "examples").glob("*.png"))
    assert [p.name.split("_")[0] for p in examples] == [str(i) for i in range(len(FASHION_MNIST_LABELS))]
    for path in examples:
        first = int((labels == int(path.name.split("_")[0])).nonzero()[0])
        with Image.open(path) as image:
            assert image.size == (28, 28)
            assert np.array_equal(np.asarray(image.convert("L")), as_uint8(images[first:first + 1])[0])


def test_training_size_with_a_light_border_is_inverted_not_kept():
    arr = np.full((28, 28), 250, np.uint8)
    arr[6:22, 9:19] = 20
    unit = Preprocess().to_unit(Image.fromarray(arr))
    assert unit[0, 0, 0] == 0 and unit[0, 14, 14] > 0.9


def test_training_format_is_only_resized_at_other_analysis_sizes():
    arr = np.zeros((28, 28), np.uint8)
    arr[20:26, 3:9] = 200  # a small item in a corner: a photo would be cropped to it, this is not
    view = Preprocess().view(Image.fromarray(arr), (56, 56))
    assert not view.unchanged and view.box is None and not view.inverted
    assert np.array_equal(np.asarray(view.image), np.asarray(Image.fromarray(arr).resize((56, 56), Image.BILINEAR)))


def test_what_the_model_sees_is_what_it_gets():
    rng = np.random.default_rng(0)
    arr = rng.integers(200, 230, (90, 140, 3)).astype(np.uint8)
    arr[20:70, 30:60] = (150, 20, 20)
    pre = Preprocess()
    view = pre.view(Image.fromarray(arr))
    assert view.inverted and not view.unchanged
    shown = torch.from_numpy(np.asarray(view.image, np.float32) / 255)[None]
    assert torch.equal(pre(Image.fromarray(arr)), pre.normalize(shown))
    left, top, right, bottom = view.box
    assert abs(left - 30) <= 3 and abs(top - 20) <= 3 and abs(right - 60) <= 3 and abs(bottom - 70) <= 3


@pytest.mark.parametrize("background", ["noise", "gradient", "texture", "tint"])
def test_item_is_found_on_messy_backgrounds(background):
    rng = np.random.default_rng(1)
    height, width = 300, 400
    y, x = np.mgrid[0:height, 0:width]
    base = {"noise": 225 + rng.integers(-3, 4, (height, width)),
            "gradient": 170 + 70 * x / width,
            "texture": 215 + 12 * np.sin(x / 3.0) * np.sin(y / 5.0),
            "tint": np.full((height, width), 200.0)}[background]
    arr = np.repeat(base[..., None], 3, -1).astype(np.float64)
    if background == "tint":
        arr *= (1.0, 0.9, 0.75)
    arr[180:260, 250:330] = (200, 30, 30)  # a red shoe, small and off-centre
    box = Preprocess().view(Image.fromarray(arr.clip(0, 255).astype(np.uint8))).box
    assert box is not None and max(abs(a - b) for a, b in zip(box, (250, 180, 330, 260))) <= 8  # 2% of the side


def test_thin_lines_and_blank_images_still_give_the_model_size():
    line = np.full((100, 300), 255, np.uint8)
    line[50, 20:280] = 0
    for arr in (line, np.full((50, 50), 128, np.uint8)):
        assert Preprocess().to_unit(Image.fromarray(arr)).shape == (1, 28, 28)


@pytest.mark.dataset
def test_photo_like_test_items_accuracy_floor():
    images, labels = fashion_mnist("test")
    bundle = load_checkpoint(BUNDLED, "cpu")
    uploads, truth = photo_like_set(as_uint8(images), labels.numpy(), 500, seed=2026)
    with torch.no_grad():
        predictions = torch.cat([bundle.model(torch.stack([bundle.preprocess(u) for u in uploads[i:i + 100]]))
                                 .argmax(-1) for i in range(0, len(uploads), 100)])
    accuracy = (predictions.numpy() == truth).mean()
    assert accuracy >= PHOTO_FLOOR, f"photo-like top-1 {accuracy:.2%} under the floor {PHOTO_FLOOR:.0%}"


def test_generators_are_seeded():
    items = np.zeros((3, 28, 28), np.uint8)
    items[:, 5:23, 8:20] = 200
    a, la = photo_like_set(items, np.arange(3), 4, seed=5)
    b, lb = photo_like_set(items, np.arange(3), 4, seed=5)
    assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(a, b)) and np.array_equal(la, lb)
    c, d = non_garment_set(6, seed=3), non_garment_set(6, seed=3)
    assert all(np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(c, d))
    assert not np.array_equal(np.asarray(non_garment_set(1, seed=4)[0]), np.asarray(c[0]))


def encoded(fmt: str, image: Image.Image | None = None, **kw) -> io.BytesIO:
    buffer = io.BytesIO()
    (image or Image.new("RGB", (32, 24), (200, 30, 30))).save(buffer, fmt, **kw)
    buffer.seek(0)
    return buffer


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_listed_formats_decode(fmt):
    assert read_image(encoded(fmt)).size == (32, 24)


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "ICO", "PPM", "JPEG2000"])
def test_unlisted_formats_are_refused(fmt):
    try:
        data = encoded(fmt)
    except (KeyError, OSError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    with pytest.raises(ImageInputError, match="PNG, JPEG, WebP, BMP, TIFF, GIF"):
        read_image(data)


def test_decoded_modes_are_handled():
    dark_on_clear = np.zeros((40, 40, 4), np.uint8)
    dark_on_clear[10:30, 12:28] = (20, 20, 20, 255)
    sixteen = np.full((40, 40), 3000, np.uint16)
    sixteen[10:30, 12:28] = 600
    rotated = Image.new("L", (40, 60), 240)
    rotated.paste(10, (5, 5, 35, 30))  # item in the top half before rotation
    exif = rotated.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    cases = [encoded("PNG", Image.fromarray(dark_on_clear, "RGBA")),
             encoded("PNG", Image.fromarray(sixteen)),
             encoded("JPEG", Image.new("CMYK", (40, 40), (0, 0, 0, 40)).copy()),
             encoded("PNG", Image.fromarray(dark_on_clear[..., 3]).convert("P")),
             encoded("JPEG", rotated, exif=exif)]
    pre = Preprocess()
    for data in cases:
        unit = pre.to_unit(read_image(data))
        assert unit.shape == (1, 28, 28) and torch.isfinite(unit).all()
    assert pre.to_unit(read_image(cases[0]))[0, 14, 14] > 0.8  # the dark item, flattened on white, negated
    assert pre.to_unit(read_image(cases[1]))[0, 14, 14] > 0.8  # 16-bit scaled by its own range, not clipped
    view = pre.view(read_image(cases[4]))
    assert view.box[0] > 25  # EXIF applied: after the clockwise turn the item sits on the right


def test_a_missing_file_is_named_not_called_damaged(tmp_path):
    with pytest.raises(ImageInputError, match="there is no file 'gone.png'.*open the image again"):
        read_image(tmp_path / "gone.png")

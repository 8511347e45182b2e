"""Writes assets/examples/: the first test-split image of each Fashion-MNIST class, as the raw 28x28 image.

Raw, not upscaled: an image in the training format passes through preprocessing unchanged, so each
example gives exactly the prediction `python -m rvt.evaluate` counts for that test image.
File names start with the class index (`3_dress.png`), which the tests use as ground truth.
"""
from pathlib import Path

from PIL import Image

from rvt.data import FASHION_MNIST_LABELS, load_fashion_mnist

OUT = Path(__file__).resolve().parents[1] / "assets" / "examples"


def example_name(index: int) -> str:
    return f"{index}_{FASHION_MNIST_LABELS[index].lower().replace('/', '-').replace(' ', '-')}.png"


def main() -> None:
    images, labels = load_fashion_mnist("test")
    OUT.mkdir(parents=True, exist_ok=True)
    for index in range(len(FASHION_MNIST_LABELS)):
        first = int((labels == index).nonzero()[0])
        pixels = (images[first, 0] * 255).round().byte().numpy()
        Image.fromarray(pixels, mode="L").save(OUT / example_name(index))
        print(f"{OUT / example_name(index)}: test image #{first}")


if __name__ == "__main__":
    main()

"""Writes assets/examples/: the first test-split image of each Fashion-MNIST class, upscaled 8x.

File names start with the class index (`3_dress.png`), which the tests use as ground truth.
"""
from pathlib import Path

from PIL import Image

from rvt.data import FASHION_MNIST_LABELS, load_fashion_mnist

OUT = Path(__file__).resolve().parents[1] / "assets" / "examples"


def main() -> None:
    images, labels = load_fashion_mnist("test")
    OUT.mkdir(parents=True, exist_ok=True)
    for index, name in enumerate(FASHION_MNIST_LABELS):
        first = int((labels == index).nonzero()[0])
        pixels = (images[first, 0] * 255).round().byte().numpy()
        slug = name.lower().replace("/", "-").replace(" ", "-")
        Image.fromarray(pixels).resize((224, 224), Image.Resampling.BICUBIC).save(OUT / f"{index}_{slug}.png")
        print(f"{OUT / f'{index}_{slug}.png'}: test image #{first}")


if __name__ == "__main__":
    main()

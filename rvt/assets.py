"""Where the bundled files live: one definition for the app, the CLIs and the tests."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_CHECKPOINT = ASSETS / "rvt_fashion_mnist.safetensors"
EXAMPLES = ASSETS / "examples"

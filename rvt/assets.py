"""Where the bundled files live: one definition for the app, the CLIs and the tests."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parents[1] / "assets"
BUNDLED_CHECKPOINT = ASSETS / "rvt_fashion_mnist.safetensors"
EXAMPLES = ASSETS / "examples"
SCENE_CHECKPOINTS = {  # one task, three ways to know position (assets/SCENES_MODEL_CARD.md)
    "rotary + conv queries": ASSETS / "scene_rotary.safetensors",
    "conv queries only": ASSETS / "scene_conv.safetensors",
    "no position": ASSETS / "scene_nopos.safetensors",
}

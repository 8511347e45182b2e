import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before any gradio import: no phoning home

import pytest
import torch

from reference import load_reference_rvt
from rvt import RvT


@pytest.fixture(scope="session")
def reference():
    return load_reference_rvt()


def small_config(**overrides) -> dict:
    config = dict(image_size=28, patch_size=4, num_classes=10, dim=32, depth=2, heads=2,
                  mlp_dim=64, channels=1, dim_head=16)
    config.update(overrides)
    return config


@pytest.fixture
def twin(reference):
    """A vit-pytorch RvT and ours with the same weights, both in eval mode."""
    def make(**overrides):
        torch.manual_seed(0)
        config = small_config(**overrides)
        ref = reference.RvT(**config).eval()
        ours = RvT(**config).eval()
        ours.load_state_dict(ref.state_dict(), strict=True)
        return ref, ours
    return make

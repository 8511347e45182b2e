"""The explorer's explanation texts are claims: each checkable one is checked against the code here."""
import torch
from einops import rearrange

from conftest import small_config
from lens import texts
from rvt import RvT, intervene
from rvt.rotary import AxialRotaryEmbedding
from viz.rotary import rotary_kernel


def shuffle_patches(x: torch.Tensor, patch: int, order: torch.Tensor) -> torch.Tensor:
    """The same patches at other places of the grid."""
    h = x.shape[-2] // patch
    patches = rearrange(x, "b c (h p1) (w p2) -> b (h w) c p1 p2", p1=patch, p2=patch)[:, order]
    return rearrange(patches, "b (h w) c p1 p2 -> b c (h p1) (w p2)", h=h)


def test_rotary_off_is_not_no_position():
    """WHATIF and NO_ROTARY: without rotary the depthwise-conv queries still see where patches are;
    a model with neither cannot tell a shuffled grid from the original."""
    assert "does **not** remove all position information" in texts.WHATIF
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    order = torch.randperm(49)
    shuffled = shuffle_patches(x, 4, order)
    with torch.no_grad():
        conv = RvT(**small_config(use_rotary=True)).eval()
        with intervene(conv, rotary_off=[0, 1]):
            assert not torch.allclose(conv(x), conv(shuffled), atol=1e-4)
        blind = RvT(**small_config(use_rotary=False, use_ds_conv=False)).eval()
        assert torch.allclose(blind(x), blind(shuffled), atol=1e-5)


def test_the_idealised_kernel_is_what_the_rotary_text_says():
    """ROTARY: 'q = k spread evenly over the rotated pairs', and the plus shape comes from the axial split:
    the kernel is a row part plus a column part, so it is at least 1/2 on the query's row and column."""
    assert "spread evenly over the rotated pairs" in texts.ROTARY and "axial split" in texts.ROTARY
    grid = (7, 7)
    sin, cos = AxialRotaryEmbedding(24, max_freq=28)(grid)
    query = 3 * 7 + 3
    kernel = rotary_kernel(sin, cos, query).reshape(grid)
    # q = k with the same energy in every pair: q_rot . k_rot is the mean over pairs of cos(angle difference)
    angle = torch.atan2(sin[:, ::2], cos[:, ::2])  # (N, 12 pairs)
    q = torch.ones(angle.shape[-1], 2) / (2 * angle.shape[-1]) ** 0.5  # unit vector spread evenly
    rotated = torch.stack([torch.stack((q[:, 0] * a.cos() - q[:, 1] * a.sin(),
                                        q[:, 0] * a.sin() + q[:, 1] * a.cos()), -1) for a in angle])
    scores = (rotated * rotated[query]).sum((-1, -2)).reshape(grid)
    assert torch.allclose(kernel, scores, atol=1e-5)
    rows, cols = kernel[:, 3:4] - kernel[3, 3] / 2, kernel[3:4, :] - kernel[3, 3] / 2
    assert torch.allclose(kernel, rows + cols, atol=1e-5)  # additively separable: row part + column part
    assert kernel[3].min() >= 0.5 - 1e-6 and kernel[:, 3].min() >= 0.5 - 1e-6


def test_aliasing_is_described_the_right_way_round():
    """Above pi the wrapped step is smaller than the set one: neighbours look closer, not farther."""
    assert "neighbours look closer than they are" in texts.ROTARY
    assert "look far apart" not in texts.ROTARY
    step = torch.linspace(1, 14, 6)[2] * torch.pi * 2 / 6  # band 2 at 28/4: 6.49 rad between neighbours
    wrapped = torch.remainder(step + torch.pi, 2 * torch.pi) - torch.pi
    assert step > torch.pi and abs(wrapped) < 0.25


def test_the_header_names_what_needs_further_passes():
    for needs_a_pass in ("gradient rollout", "attributions", "faithfulness scorecard", "what-if", "band switch-off",
                         "resolution sweep", "export"):
        assert needs_a_pass in texts.HEADER
    assert "class-agnostic" in texts.ROLLOUT and "heads fused the same way" in texts.ROLLOUT


def test_the_faithfulness_and_scene_texts_name_what_the_code_runs():
    """FAITHFULNESS lists the scorecard's methods at its settings; SCENES_METHODS and SCENE_SILENCING state
    the defaults the Scenes tab's buttons pass."""
    import inspect

    from lens.service import LensService
    from rvt.faithfulness import ALL_METHODS, FILLS, MapSettings
    from rvt.groundtruth import silencing

    text = " ".join(texts.FAITHFULNESS.split())
    for method in ALL_METHODS:
        name = method.split(" (")[0]  # "Attention rollout (mean)" -> every fusion is named by the sentence
        assert name.lower() in text.lower() or name == "random", method
    assert "each head fusion" in text and "random patch order" in text
    assert f"Integrated Gradients with {MapSettings().ig_steps} steps" in text
    assert all(f"*{fill}*" not in text for fill in FILLS)  # the fills are a control, named there
    defaults = inspect.signature(LensService.scene_heads).parameters
    scenes = " ".join(texts.SCENES_METHODS.split())
    assert f"over {defaults['count'].default} test scenes" in scenes
    assert {2: "two"}[defaults["k"].default] + " most object-focused heads" in scenes
    controls = inspect.signature(silencing).parameters["controls"].default
    assert f"mean of {controls} draws" in texts.SCENE_SILENCING


def test_the_attributions_text_counts_smoothgrad_as_the_code_does():
    from viz.attributions import SMOOTH_COPIES, smooth_nodes
    text = " ".join(texts.ATTRIBUTIONS.split())
    assert f"over {SMOOTH_COPIES} noisy copies" in text and f"every {SMOOTH_COPIES}th" in text
    assert "a multiple of 8, at least 16" in text
    assert [smooth_nodes(s) for s in (1, 16, 17, 32)] == [16, 16, 24, 32]

"""Attribution baselines: what each one is, IG's completeness against it, and what the text says."""
import numpy as np
import pytest
import torch
from captum.attr import IntegratedGradients
from PIL import Image

from conftest import small_config
from rvt import Preprocess, RvT
from rvt.analysis import display_image
from viz.attributions import (
    BASELINES,
    METHODS,
    attribute,
    attribution_figure,
    attribution_image,
    baseline_input,
    describe,
    describe_baseline,
    occlusion_window,
    smooth_nodes,
    smoothgrad_maps,
)
from viz.attributions import _shared_grid_smoothgrad as shared_grid_smoothgrad
from viz.render import figure_to_image

PRE = Preprocess()  # Fashion-MNIST's normalisation: black is -0.286 / 0.353


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return RvT(**small_config()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def garment():
    """A light item on a black background, normalised: (1, 1, 28, 28)."""
    unit = torch.zeros(1, 28, 28)
    unit[:, 6:22, 9:19] = torch.linspace(0.4, 1.0, 10)
    return PRE.normalize(unit)[None]


def test_black_is_the_models_input_for_a_black_pixel_and_mean_is_zero(garment):
    black = baseline_input(garment, "black", PRE)
    assert black.shape == garment.shape
    assert torch.allclose(black, torch.full_like(garment, -PRE.mean[0] / PRE.std[0]))
    assert torch.allclose(black, PRE.normalize(torch.zeros(1, 28, 28))[None])
    assert torch.equal(baseline_input(garment, "mean", PRE), torch.zeros_like(garment))


def test_blur_keeps_a_flat_image_and_spreads_an_edge(garment):
    flat = PRE.normalize(torch.full((1, 28, 28), 0.5))[None]
    assert torch.allclose(baseline_input(flat, "blur", PRE), flat, atol=1 / 255 / PRE.std[0])
    blurred = baseline_input(garment, "blur", PRE)
    black = -PRE.mean[0] / PRE.std[0]
    assert blurred[0, 0, 14, 6] > black + 0.05  # light has leaked past the item's edge (column 9)
    assert blurred[0, 0, 14, 14] < garment[0, 0, 14, 14]  # and the item is dimmer
    # Pillow's Gaussian blur preserves the total light up to the borders and 8-bit rounding.
    unit = lambda t: t * PRE.std[0] + PRE.mean[0]  # noqa: E731
    assert unit(blurred).sum().item() == pytest.approx(unit(garment).sum().item(), rel=0.03)


def test_noise_is_seeded_and_inside_the_pixel_range(garment):
    a = baseline_input(garment, "noise", PRE, samples=3, seed=1)
    b = baseline_input(garment, "noise", PRE, samples=3, seed=1)
    assert a.shape == (3, 1, 28, 28) and torch.equal(a, b)
    assert not torch.equal(a, baseline_input(garment, "noise", PRE, samples=3, seed=2))
    white = (1 - PRE.mean[0]) / PRE.std[0]
    assert a.min() >= -PRE.mean[0] / PRE.std[0] - 1e-6 and a.max() <= white + 1e-6


def test_bad_baselines_are_refused_with_the_choices(garment):
    with pytest.raises(ValueError, match="black, blur, mean, noise"):
        baseline_input(garment, "zeros", PRE)
    with pytest.raises(TypeError, match="Preprocess"):
        baseline_input(garment, "black", -0.81)
    with pytest.raises(ValueError, match=r"\(1, 1, H, W\)"):
        baseline_input(garment.repeat(2, 1, 1, 1), "black", PRE)


@pytest.mark.parametrize("baseline", BASELINES)
def test_integrated_gradients_add_up_to_the_logit_change_from_the_baseline(model, garment, baseline):
    target = 3
    attr = attribute(model, garment, target, "Integrated Gradients", steps=200, baseline=baseline, preprocess=PRE)
    reference = baseline_input(garment, baseline, PRE)[:1]  # IG uses the first draw of the noise
    with torch.no_grad():
        gap = (model(garment)[0, target] - model(reference)[0, target]).item()
    assert attr.sum().item() == pytest.approx(gap, abs=0.02 * max(1.0, abs(gap)))


def test_integrated_gradients_are_zero_where_the_input_equals_the_black_baseline(model, garment):
    attr = attribute(model, garment, 1, "Integrated Gradients", steps=16, baseline="black", preprocess=PRE)
    background = garment[0, 0] == garment[0, 0, 0, 0]
    assert background.sum() > 400 and attr[0, 0][background].abs().max() == 0
    grey = attribute(model, garment, 1, "Integrated Gradients", steps=16, baseline="mean", preprocess=PRE)
    assert grey[0, 0][background].abs().sum() > 0  # against grey the background gets scores: issue 8's 63%


def test_occlusion_pastes_the_baseline_so_black_windows_on_black_score_zero(model, garment):
    attr = attribute(model, garment, 2, "Occlusion", baseline="black", preprocess=PRE, occlusion=(4, 4))
    assert attr[0, 0, :4, :4].abs().max() < 1e-5  # an all-black window is unchanged by pasting black
    assert attr[0, 0, 8:20, 8:20].abs().max() > 1e-3
    with pytest.raises(ValueError, match="stride"):
        attribute(model, garment, 2, "Occlusion", preprocess=PRE, occlusion=(4, 8))


def test_smoothgrad_family_without_noise_is_the_gradient(model, garment):
    maps = smoothgrad_maps(model, garment, 4, samples=4, stdev=0.0)
    plain = attribute(model, garment, 4, "Saliency", preprocess=PRE)
    assert torch.allclose(maps["smoothgrad"], plain, atol=1e-6)
    assert torch.allclose(maps["smoothgrad_sq"], plain ** 2, atol=1e-6)
    assert maps["vargrad"].abs().max() < 1e-6
    noisy = smoothgrad_maps(model, garment, 4, samples=6, stdev=0.3)
    assert noisy["vargrad"].min() >= -1e-7 and noisy["vargrad"].max() > 0


def test_smoothgrad_ig_copies_share_one_midpoint_rule(model, garment):
    """Without noise the copies are one input, and their interleaved nodes make IG's midpoint rule."""
    black = baseline_input(garment, "black", PRE)
    shared = shared_grid_smoothgrad(model, garment, 5, black, steps=12, batch_size=3, copies=4, stdev=0.0)
    midpoint = IntegratedGradients(model).attribute(garment, baselines=black, target=5, n_steps=12,
                                                    method="riemann_middle")
    assert torch.allclose(shared, midpoint, atol=1e-6 * midpoint.abs().max().item())


def test_smoothgrad_ig_is_the_mean_of_noisy_igs_on_interleaved_nodes_at_the_cost_of_ig(model, garment):
    """The public path against the estimator written out with autograd: copy k's noise from the seeded
    draw, its gradients at path fractions (j * copies + k + 0.5) / nodes, times (copy - baseline)."""
    target, steps, copies = 7, 20, 8
    nodes = smooth_nodes(steps)
    assert nodes == 24  # rounded up to a multiple of the copies
    sizes = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[0])
            return model(x)

    attr = attribute(Counting(), garment, target, "Integrated Gradients", steps=steps, noise_tunnel=True,
                     batch_size=5, preprocess=PRE)
    assert sum(sizes) == nodes and max(sizes) <= 5  # NoiseTunnel would have run 8 x 20

    black = baseline_input(garment, "black", PRE)
    noise = 0.15 * torch.randn((copies, *garment.shape[1:]), generator=torch.Generator().manual_seed(0))
    expected = torch.zeros_like(garment)
    for k in range(copies):
        copy = garment + noise[k:k + 1]
        fractions = (torch.arange(nodes // copies) * copies + k + 0.5) / nodes
        points = (black + fractions[:, None, None, None] * (copy - black)).requires_grad_(True)
        with torch.enable_grad():
            grad, = torch.autograd.grad(model(points)[:, target].sum(), points)
        expected += (copy - black) * grad.mean(0, keepdim=True) / copies
    assert torch.allclose(attr, expected, atol=1e-5 * expected.abs().max().item())
    assert "share 24 points" in describe("Integrated Gradients", "black", PRE, True, steps=steps)


@pytest.mark.parametrize("steps", [1, 4, 8, 9])
def test_smoothgrad_ig_takes_every_step_count_the_slider_offers(model, garment, steps):
    """captum's Riemann rules need two points: each copy gets at least two, so 1-16 steps give 16."""
    sizes = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[0])
            return model(x)

    attr = attribute(Counting(), garment, 2, "Integrated Gradients", steps=steps, noise_tunnel=True, preprocess=PRE)
    assert sum(sizes) == smooth_nodes(steps) == 16 and torch.isfinite(attr).all()


def test_check_cancels_an_attribution(model, garment):
    class Stop(Exception):
        pass

    def check():
        raise Stop

    with pytest.raises(Stop):
        attribute(model, garment, 0, "Integrated Gradients", steps=8, preprocess=PRE, check=check)


def test_texts_name_the_baseline_used():
    assert describe_baseline("black", PRE) == "a black image (the dataset's background)"
    assert "73/255" in describe_baseline("mean", PRE)  # the global mean intensity, not a mean image
    assert "sigma 4 px" in describe_baseline("blur", PRE)
    ig = describe("Integrated Gradients", "black", PRE)
    assert "from a black image" in ig and "minus that of the baseline" in ig
    assert "replaced by a flat grey" in describe("Occlusion", "mean", PRE)
    assert "no baseline" in describe("Saliency", "black", PRE)
    assert "Variance" in describe("Saliency", "black", PRE, noise_tunnel="vargrad")
    with pytest.raises(ValueError, match="noise_tunnel"):
        describe("Saliency", "black", PRE, noise_tunnel="sometimes")


def test_notes_name_the_steps_and_windows_the_computation_used(model, garment):
    assert "12 steps" in describe("Integrated Gradients", "black", PRE, steps=12)
    assert "12 samples" in describe("GradientShap", "black", PRE, steps=12)
    assert "steps do not apply" in describe("Saliency", "black", PRE, steps=12)
    side, stride = occlusion_window((28, 28))
    assert f"{side} px windows every {stride} px" in describe("Occlusion", "black", PRE, steps=12)
    sizes = []

    class Counting(torch.nn.Module):
        def forward(self, x):
            sizes.append(x.shape[0])
            return model(x)

    attribute(Counting(), garment, 0, "Occlusion", preprocess=PRE)
    assert sum(sizes) == ((28 - side) // stride + 1) ** 2 + 1  # every window once, plus the input itself
    rounded = describe("Integrated Gradients", "black", PRE, True, steps=4)
    assert "share 16 points along the path (4 steps rounded up" in rounded


def test_attribution_figure_carries_the_note(model, garment):
    import matplotlib.pyplot as plt
    attr = attribute(model, garment, 0, "Saliency", preprocess=PRE)
    image = display_image(garment[0] * PRE.std[0] + PRE.mean[0])
    plain = figure_to_image(attribution_figure(image, attr, "Saliency"))
    noted = figure_to_image(attribution_figure(image, attr, "Saliency", describe("Saliency", "black", PRE)))
    assert isinstance(noted, Image.Image) and noted.height > plain.height
    assert plt.get_fignums() == []
    assert set(METHODS) == {"Integrated Gradients", "Saliency", "Occlusion", "GradientShap"}


def test_attribution_image_draws_the_signed_map_and_the_evidence_over_the_input():
    """The page's Pillow picture: red where a pixel counts for the class, blue against, and the
    evidence panel shows the input untouched wherever the score is not positive."""
    image = np.full((28, 28, 3), 40, np.uint8)
    attr = torch.zeros(1, 1, 28, 28)
    attr[..., :14, :] = 2.0  # top half for the class
    attr[..., 14:, :] = -1.0  # bottom half against
    picture = np.asarray(attribution_image(image, attr, "IG"))
    top, side = 52, 200  # the panels' top and side in pixels (attribution_image's layout)
    signed_for, signed_against = picture[top + 50, 245 + 100].astype(int), picture[top + 150, 245 + 100].astype(int)
    assert signed_for[0] > signed_for[2] + 50 and signed_against[2] > signed_against[0] + 50
    evidence_for, evidence_against = picture[top + 50, 495 + 100], picture[top + 150, 495 + 100]
    assert tuple(evidence_against) == (40, 40, 40) and tuple(evidence_for) != (40, 40, 40)
    noted = attribution_image(image, attr, "IG", describe("Integrated Gradients", "black", PRE))
    assert noted.height > picture.shape[0] and picture.shape[0] >= top + side


def test_attribution_passes_hold_at_most_the_batch_the_budget_allows():
    """Memory of an attribution grows with the images per pass: IG and GradientShap (which captum would
    run in one batch of n_samples) stay within `batch_size`, and the service derives that from its budget."""
    import torch

    from conftest import small_config
    from rvt import Preprocess, RvT
    from rvt.budget import gradient_batch

    torch.manual_seed(0)
    model = RvT(**small_config(depth=1)).eval()
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    x = torch.randn(1, 1, 28, 28)
    for method in ("Integrated Gradients", "GradientShap"):
        seen.clear()
        attr = attribute(model, x, 0, method, steps=40, batch_size=8, preprocess=Preprocess())
        assert attr.shape == x.shape and torch.isfinite(attr).all()
        assert max(seen) <= 8 and sum(seen) >= 40, (method, seen)
    config = RvT(**small_config(depth=6, heads=4)).config  # as deep and wide as the bundled model
    assert gradient_batch(config, (28, 28), 10**9) == 64  # small inputs: captum's usual batch
    assert 1 <= gradient_batch(config, (224, 224), 10**9) < gradient_batch(config, (112, 112), 10**9) < 64
    assert gradient_batch(config, (448, 448), 10**8) == 1  # never zero: one image at a time

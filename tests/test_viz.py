import json
from xml.etree import ElementTree

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_config
from rvt import Preprocess, RvT, capture, load_checkpoint, save_checkpoint
from rvt.analysis import analyze, attention_gradients
from viz import panels
from viz.attributions import METHODS, attribute, baseline_input
from viz.render import colorize, lut, overlay
from viz.rollout import attention_rollout, gradient_rollout
from viz.rotary import aliasing_bands, phase_steps, query_kernels, rotary_kernel
from viz.stats import attention_entropy, cls_share, mean_attention_distance


def normalise_rows(a):
    return a / a.sum(-1, keepdim=True)


def test_rollout_rows_sum_to_one_and_identity_stays_identity():
    attention = torch.softmax(torch.randn(3, 2, 4, 6, 6), -1)
    rolled = attention_rollout(attention)
    assert torch.allclose(rolled.sum(-1), torch.ones(2, 6), atol=1e-5)
    eye = torch.eye(6).expand(3, 2, 4, 6, 6)
    assert torch.allclose(attention_rollout(eye), torch.eye(6).expand(2, 6, 6))


def test_rollout_matches_a_hand_computed_two_layer_case():
    a1 = torch.tensor([[0.5, 0.5], [0.2, 0.8]])
    a2 = torch.tensor([[0.9, 0.1], [0.4, 0.6]])
    # residual then row-normalise: (A + I) / 2 here since rows of A sum to 1
    r1, r2 = (a1 + torch.eye(2)) / 2, (a2 + torch.eye(2)) / 2
    expected = r2 @ r1  # forward order: layer 1 first, then layer 2
    attention = torch.stack([a1, a2])[:, None, None]  # (L=2, B=1, H=1, 2, 2)
    assert torch.allclose(attention_rollout(attention)[0], expected)
    assert not torch.allclose(expected, r1 @ r2)  # the order matters for this case
    # Rows that do not sum to 1 get renormalised row-wise, not column-wise.
    skew = torch.tensor([[0.2, 0.0], [0.6, 0.6]])[None, None, None]
    manual = normalise_rows(skew[0, 0, 0] + torch.eye(2))
    assert torch.allclose(attention_rollout(skew)[0], manual)


def test_rollout_head_fusion_and_discard():
    attention = torch.softmax(torch.randn(2, 1, 3, 5, 5), -1)
    mean, high = attention_rollout(attention, "mean"), attention_rollout(attention, "max")
    assert not torch.allclose(mean, high)
    discarded = attention_rollout(attention, discard_ratio=0.9)
    assert torch.allclose(discarded.sum(-1), torch.ones(1, 5), atol=1e-5)
    with pytest.raises(ValueError, match="head_fusion"):
        attention_rollout(attention, "median")


def test_gradient_rollout_hand_computed():
    a = torch.tensor([[0.5, 0.5], [0.2, 0.8]])[None, None, None].expand(2, 1, 2, 2, 2).clone()
    g = torch.tensor([[1.0, -1.0], [2.0, 0.5]])[None, None, None].expand(2, 1, 2, 2, 2).clone()
    g[:, :, 1] = 0  # second head has no gradient: mean halves the first head
    w = (a[0, 0, 0] * g[0, 0, 0]).clamp(min=0) / 2
    r = normalise_rows(w + torch.eye(2))
    assert torch.allclose(gradient_rollout(a, g)[0], r @ r)


def test_mean_attention_distance_known_values():
    grid, patch = (2, 2), 4
    n = 5
    self_attention = torch.eye(n).expand(1, 1, 1, n, n)
    assert torch.allclose(mean_attention_distance(self_attention, grid, patch), torch.zeros(1, 1))
    uniform = torch.full((1, 1, 1, n, n), 1 / n)
    # 2x2 grid, 4 px patches: from any patch, distances 0, 4, 4, 4*sqrt(2) -> mean (8 + 4*sqrt(2)) / 4
    expected = (8 + 4 * 2 ** 0.5) / 4
    assert mean_attention_distance(uniform, grid, patch).item() == pytest.approx(expected, rel=1e-5)
    assert attention_entropy(uniform).item() == pytest.approx(np.log(n), rel=1e-5)
    assert cls_share(uniform).item() == pytest.approx(1 / n)


def test_rotary_kernel_is_one_at_zero_offset_and_symmetric():
    model = RvT(**small_config(dim_head=16))
    sin, cos = model.transformer.pos_emb((5, 5))
    centre = 12
    k = rotary_kernel(sin, cos, centre)
    assert k[centre].item() == pytest.approx(1.0, abs=1e-6)
    grid = k.reshape(5, 5)
    assert torch.allclose(grid, grid.flip(0).flip(1), atol=1e-5)  # symmetric under offset -> -offset
    full = torch.stack([rotary_kernel(sin, cos, i) for i in range(25)])
    assert torch.allclose(full, full.T, atol=1e-5)


def test_aliasing_follows_the_nyquist_rule():
    scales = torch.linspace(1, 128, 16)  # RvT at 256 px, dim_head 64
    bands = aliasing_bands(scales, (16, 16))  # 256/16 patches
    assert bands["rows"] == list(range(1, 16))  # only the lowest band stays below pi
    assert phase_steps(scales, 16)[0] < np.pi < phase_steps(scales, 16)[1]


def test_overlay_uses_the_colormap_table():
    values = np.array([[0.0, 1.0]])
    colours = colorize(values, "viridis")
    assert (colours[0, 0] == lut("viridis")[0]).all() and (colours[0, 1] == lut("viridis")[-1]).all()
    image = np.zeros((8, 16, 3), np.uint8)
    out = overlay(image, values, "viridis", alpha=1.0)
    assert out.shape == (8, 16, 3) and (out[:, :8] == lut("viridis")[0]).all()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "m.safetensors"
    save_checkpoint(path, RvT(**small_config(depth=2, heads=3)), [f"c{i}" for i in range(10)], Preprocess())
    return load_checkpoint(path, "cpu")


@pytest.fixture(scope="module")
def photo():
    rng = np.random.default_rng(0)
    arr = np.full((60, 40, 3), 230, np.uint8)
    arr[10:50, 8:32] = rng.integers(0, 120, (40, 24, 3))
    return Image.fromarray(arr)


@pytest.mark.parametrize("baseline", ["black", "mean", "blur"])
def test_integrated_gradients_completeness(bundle, baseline):
    """IG's scores add up to the logit at the input minus the logit at the baseline it names."""
    x = torch.randn(1, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    target = 3
    attr = attribute(bundle.model, x, target, "Integrated Gradients", steps=200, baseline=baseline,
                     preprocess=bundle.preprocess)
    with torch.no_grad():
        start = baseline_input(x, baseline, bundle.preprocess)
        gap = bundle.model(x)[0, target] - bundle.model(start)[0, target]
    assert attr.sum().item() == pytest.approx(gap.item(), abs=0.02 * max(1.0, abs(gap.item())))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("noise_tunnel", [False, True])
def test_every_attribution_method_reports_progress(bundle, method, noise_tunnel):
    seen = []
    attr = attribute(bundle.model, torch.randn(1, 1, 28, 28), 1, method, steps=4,
                     noise_tunnel=noise_tunnel, progress=seen.append)
    assert attr.shape == (1, 1, 28, 28) and attr.abs().sum() > 0
    assert seen[-1] == 1.0 and seen == sorted(seen)


def test_panels_have_sizes_and_leave_no_figures_open(bundle, photo):
    import matplotlib.pyplot as plt
    analysis = analyze(bundle, photo, (20, 36))  # non-square grid 5x9
    assert analysis.grid == (5, 9) and analysis.image.shape == (20, 36, 3)
    images = [panels.predictions_panel(analysis), panels.heads_panel(analysis, 1),
              panels.heads_panel(analysis, 0, (2, 7), shared_scale=False), panels.model_panel(analysis),
              panels.rollout_panel(analysis), panels.stats_panel(analysis), panels.phase_panel(analysis, bundle),
              panels.steps_panel(analysis, bundle), panels.kernel_panel(analysis, 1, 2, (4, 0)),
              panels.head_overlay(analysis, 1, 2)]
    for image in images:
        assert image.width > 100 and image.height > 100
    figures = panels.print_figures(analysis, bundle, (4, 0))
    assert {"predictions", "head_stats", "rotary_bands", "rotary_nyquist", "rotary_kernel_layer1_head0"} <= set(figures)
    grads = attention_gradients(bundle, analysis, 2)
    assert grads.shape == analysis.trace.attention.shape
    panels.rollout_panel(analysis, gradients=grads)
    assert plt.get_fignums() == []


def test_the_kernel_panel_shows_the_scores_the_model_softmaxes(bundle, photo):
    analysis = analyze(bundle, photo)
    layer, head, query = 1, 2, (3, 5)
    index = query[0] * analysis.grid[1] + query[1]
    qk = {name: analysis.trace.qk(name)[layer, 0, head] for name in ("q", "k", "q_rot", "k_rot")}
    sin, cos = analysis.trace.rotary
    titles, used = zip(*[(title, values) for title, values, _, _ in query_kernels(sin, cos, analysis.grid, query, qk)])
    assert "with rotation (used)" in titles[2]
    scale = qk["q"].shape[-1] ** -0.5
    cls_key = qk["q_rot"][1 + index] @ qk["k_rot"][0] * scale  # the one key the panel leaves out
    row = torch.cat([cls_key[None], used[2].flatten()]).softmax(-1)
    assert torch.allclose(row, analysis.trace.attention[layer, 0, head, 1 + index], atol=1e-5)
    assert torch.allclose(used[3], used[2] - used[1])


def test_analysis_matches_a_direct_capture(bundle, photo):
    analysis = analyze(bundle, photo)
    x = bundle.preprocess(photo)[None]
    with torch.no_grad(), capture(bundle.model) as trace:
        logits = bundle.model(x)
    assert torch.allclose(analysis.probs, logits.softmax(-1)[0], atol=1e-6)
    assert torch.allclose(analysis.trace.attention, trace.attention)


def test_report_cli_writes_everything(bundle, photo, tmp_path):
    from viz.__main__ import main
    photo.save(tmp_path / "photo.png")
    main([str(tmp_path / "photo.png"), "--checkpoint", bundle.source, "--out", str(tmp_path / "out")])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert len(summary["prediction"]) == 5 and len(summary["head_stats"]["entropy_nats"]) == 2
    tensors = np.load(tmp_path / "out" / "tensors.npz")
    assert tensors["attention"].shape == (2, 1, 3, 50, 50)
    pngs = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert "rotary_steps.png" in pngs and "attribution_occlusion.png" in pngs and len(pngs) == 8 + 3 * 2 + 4
    svgs = sorted(p.name for p in (tmp_path / "out" / "print").glob("*.svg"))
    assert svgs == sorted(["predictions.svg", "head_stats.svg", "rotary_bands.svg", "rotary_nyquist.svg",
                           "rotary_kernel_layer0_head0.svg", "rotary_kernel_layer1_head0.svg",
                           "faithfulness_curves.svg", "faithfulness_randomization.svg", "faithfulness_scorecard.svg",
                           *(f"attribution_{m.lower().replace(' ', '_')}.svg" for m in METHODS)])
    for name in svgs:  # vector files: well-formed XML whose root is an <svg> element
        assert ElementTree.parse(tmp_path / "out" / "print" / name).getroot().tag.endswith("svg")
    with pytest.raises(SystemExit, match="error: .*not a checkpoint"):
        main([str(tmp_path / "photo.png"), "--checkpoint", str(tmp_path / "photo.png"), "--out", str(tmp_path / "x")])


def test_a_report_stops_inside_its_scorecard_when_checked(bundle, photo, tmp_path):
    """The export's cancel reaches the scorecard's passes, not only the gaps between panels."""
    from rvt.faithfulness import clear_caches
    from viz.report import write_report

    clear_caches()  # a cached scorecard runs no pass to check

    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) > 3:
            raise Stop

    analysis = analyze(bundle, photo)
    with pytest.raises(Stop):
        write_report(analysis, bundle, tmp_path / "out", attributions=False, check=check)
    assert not (tmp_path / "out" / "summary.json").exists()

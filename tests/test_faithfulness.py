"""Faithfulness checks with known answers: deletion on a one-region model, randomisation of input-only maps,
the bundled model's rollout (fails) and IG (passes against grey), infidelity of an exact map, and the export."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import small_config
from rvt import Preprocess, RvT, save_checkpoint
from rvt.checkpoint import load_checkpoint
from rvt.faithfulness import (
    ALL_METHODS,
    RANDOM,
    FaithfulnessConfig,
    MapSettings,
    clear_caches,
    deletion_insertion,
    infidelity_scores,
    randomization_check,
    randomized_cascade,
    scorecard,
    spearman,
)
from rvt.faithfulness.randomization import model_key, stages
from rvt.preprocess import read_image
from viz.__main__ import DEFAULT_CHECKPOINT as BUNDLED_CHECKPOINT

PRE = Preprocess()
EXAMPLES = BUNDLED_CHECKPOINT.parent / "examples"
REGION = (2, 3)  # the one patch (row, column) of the 7x7 grid that the region model reads


class RegionModel(nn.Module):
    """Two classes; the logit of class 0 is 4x the mean of one 4x4 patch, nothing else matters."""
    patch_size = 4

    def forward(self, x):
        r, c = REGION
        s = x[:, :, 4 * r:4 * r + 4, 4 * c:4 * c + 4].mean((1, 2, 3))
        return torch.stack([4 * s, torch.zeros_like(s)], dim=1)


@pytest.fixture(scope="module")
def bright():
    """A normalised image whose every pixel is light (so removing any patch could matter)."""
    return PRE.normalize(torch.full((1, 28, 28), 0.9))[None]


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return RvT(**small_config()).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def bundle():
    return load_checkpoint(BUNDLED_CHECKPOINT, "cpu")


def test_deletion_by_the_perfect_map_drops_first_and_the_random_map_later(bright):
    model = RegionModel()
    perfect = torch.zeros(1, 7, 7)
    perfect[0, REGION[0], REGION[1]] = 1.0
    random = torch.rand((1, 7, 7), generator=torch.Generator().manual_seed(1))  # ranks the region 26th
    curves = deletion_insertion(model, bright, 0, {"perfect": perfect, RANDOM: random}, PRE, "black", steps=49)
    with torch.no_grad():
        p_full = model(bright).softmax(-1)[0, 0].item()
        p_empty = model(PRE.normalize(torch.zeros(1, 28, 28))[None]).softmax(-1)[0, 0].item()
    assert p_full > 0.99 and p_empty < 0.05
    np.testing.assert_allclose(curves.deletion["perfect"], [p_full] + [p_empty] * 49, atol=1e-6)
    # The random order reaches the region at its rank: the curve stays up until then, then drops.
    rank = int((random.flatten() > random[0, REGION[0], REGION[1]]).sum())
    assert rank > 5
    expected = [p_full] * (rank + 1) + [p_empty] * (49 - rank)
    np.testing.assert_allclose(curves.deletion[RANDOM], expected, atol=1e-6)
    assert curves.deletion_auc("perfect") < 0.05 < 0.1 < curves.deletion_auc(RANDOM)
    np.testing.assert_allclose(curves.insertion["perfect"], [p_empty] + [p_full] * 49, atol=1e-6)
    assert curves.insertion_auc("perfect") > 0.95 > curves.insertion_auc(RANDOM)
    assert curves.fractions[0] == 0 and curves.fractions[-1] == 1 and len(curves.fractions) == 50


def test_deletion_ranks_pixel_maps_per_patch_and_gradients_by_magnitude(bright):
    model = RegionModel()
    pixels = torch.zeros(1, 1, 28, 28)
    pixels[..., 4 * REGION[0] + 1, 4 * REGION[1] + 2] = -5.0  # one strongly negative pixel in the region
    signed = deletion_insertion(model, bright, 0, {"Integrated Gradients": pixels}, PRE, steps=49)
    magnitude = deletion_insertion(model, bright, 0, {"Saliency": pixels}, PRE, steps=49)
    assert signed.deletion["Integrated Gradients"][1] > 0.99  # negative evidence goes last
    assert magnitude.deletion["Saliency"][1] < 0.05  # a gradient's size counts, not its sign


def test_spearman_matches_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, 60).astype(float)  # many ties
    b = a + rng.normal(0, 1.5, 60)
    assert spearman(torch.tensor(a), torch.tensor(b)) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(torch.ones(5), torch.arange(5.0)) == 0.0  # a constant map carries no ranking


def edges(model, x, target):
    """Sobel magnitude of the input: a map that ignores the model entirely."""
    kx = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])[None, None]
    gx = nn.functional.conv2d(x, kx, padding=1)
    gy = nn.functional.conv2d(x, kx.transpose(-1, -2), padding=1)
    return (gx ** 2 + gy ** 2).sqrt()[0, 0]


def test_an_edge_detector_fails_the_randomisation_check(small, bright):
    x = bright.clone()
    x[..., 8:20, 10:18] = -0.5
    result = randomization_check(small, x, 1, PRE, ["Saliency", "edges", RANDOM], extra={"edges": edges})
    assert result.stages == ["classifier head", "layer 1", "layer 0", "embedding"]
    assert result.spearman["edges"] == [1.0] * 4 and not result.passes("edges")
    assert result.spearman[RANDOM] == [1.0] * 4 and not result.passes(RANDOM)
    assert result.spearman["Saliency"][-1] < 0.9


def test_randomised_copies_are_seeded_cached_and_leave_the_model_alone(small):
    before = {k: v.clone() for k, v in small.state_dict().items()}
    cascade = randomized_cascade(small, seed=5)
    assert randomized_cascade(small, seed=5) is cascade  # cached per model weights
    assert all(torch.equal(v, small.state_dict()[k]) for k, v in before.items())
    assert model_key(cascade[0][1]) != model_key(small)
    head_only = cascade[0][1].state_dict()
    changed = {k for k, v in head_only.items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("mlp_head.1") for k in changed)  # a LayerNorm resets to what it was
    everything = cascade[-1][1].state_dict()
    assert not torch.equal(everything["cls_token"], before["cls_token"])
    twin = RvT(**small_config()).eval()
    twin.load_state_dict(small.state_dict())
    again = randomized_cascade(twin, seed=5)  # same weights, same seed: the cached cascade
    assert again is cascade
    fresh = [dict(m.state_dict()) for _, m in randomized_cascade(small, seed=6)]
    assert not torch.equal(fresh[-1]["cls_token"], everything["cls_token"])
    assert len(stages(small)) == small.config.depth + 2


def test_infidelity_is_zero_for_the_exact_map_of_a_linear_model(bright):
    class Linear(nn.Module):
        patch_size = 4

        def __init__(self):
            super().__init__()
            self.w = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(0))

        def forward(self, x):
            s = (x * self.w).flatten(1).sum(1)
            return torch.stack([s, -s], dim=1)

    model = Linear()
    noise = torch.randn((1, 1, 28, 28), generator=torch.Generator().manual_seed(1))
    scores = infidelity_scores(model, bright, 0, {"gradient": model.w, "noise": noise}, PRE, samples=16)
    assert scores["gradient"] < 1e-6 < 1.0 < scores["noise"]


def test_the_bundled_model_rollout_fails_and_integrated_gradients_pass_against_grey(bundle):
    x, target = bundle.preprocess(read_image(EXAMPLES / "1_trouser.png"))[None], 1
    methods = ["Attention rollout (mean)", "Integrated Gradients"]
    grey = randomization_check(bundle.model, x, target, bundle.preprocess, methods, MapSettings(baseline="mean"))
    assert not grey.passes("Attention rollout (mean)") and grey.spearman["Attention rollout (mean)"][0] == 1.0
    assert grey.passes("Integrated Gradients")
    # Against black, IG is exactly zero on the black background in every model: the input's silhouette
    # survives randomisation and the check reports it.
    black = randomization_check(bundle.model, x, target, bundle.preprocess, ["Integrated Gradients"])
    assert not black.passes("Integrated Gradients") and min(black.spearman["Integrated Gradients"]) > 0.8


def test_scorecard_summary_progress_cancel_and_cache(small, bright):
    x = bright.clone()
    x[..., :, :8] = -0.81
    seen = []
    config = FaithfulnessConfig(fills=("black", "blur"), infidelity_samples=8, sensitivity_samples=2)
    card = scorecard(small, x, None, PRE, config, progress=seen.append)
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    cached = scorecard(small, x, None, PRE, config)
    assert card.seconds > 0 and cached.seconds == 0.0  # served from the cache: no time spent
    assert cached.maps is card.maps and cached.curves is card.curves  # the same numbers, not recomputed
    summary = card.summary()
    assert list(summary) == list(ALL_METHODS)
    for method, row in summary.items():
        assert 0 <= row["deletion_auc"] <= 1 and 0 <= row["insertion_auc"] <= 1
        assert -1 <= row["randomization_spearman"] <= 1 and isinstance(row["passes_randomization"], bool)
        assert row["deletion_auc_blur"] is not None and len(row["randomization_curve"]) == 4
        assert (row["sensitivity"] is None) == (method in ("Integrated Gradients", "Occlusion", "GradientShap",
                                                           "SmoothGrad", "SmoothGrad squared", "VarGrad"))
    assert summary[RANDOM]["randomization_spearman"] == 1.0 and summary[RANDOM]["sensitivity"] == 0.0
    assert RANDOM not in card.best().values() and set(card.best()) == {
        "deletion_auc", "insertion_auc", "randomization_spearman", "infidelity", "sensitivity"}
    settings = card.settings()
    assert settings["attribution_baseline"] == "a black image (the dataset's background)"
    assert "disagree" in settings["caveat"] and "0.5" in settings["randomization_rule"]
    json.dumps({"faithfulness": summary, "settings": settings})
    clear_caches()
    assert scorecard(small, x, None, PRE, config).summary() == summary  # seeded: the same numbers again

    class Stop(Exception):
        pass

    def stop():
        raise Stop

    with pytest.raises(Stop):
        scorecard(small, x + 0.1, None, PRE, config, check=stop)
    with pytest.raises(ValueError, match="fills"):
        scorecard(small, x, None, PRE, FaithfulnessConfig(fills=("white",)))


def test_pictures_and_the_export(small, bright, tmp_path):
    import matplotlib.pyplot as plt

    from viz.__main__ import main
    from viz.faithfulness import FAILED, PANEL_WIDTH, curves_panel, randomization_panel, scorecard_panel
    config = FaithfulnessConfig(infidelity_samples=8, sensitivity_samples=2)
    card = scorecard(small, bright, 0, PRE, config)
    for image in (curves_panel(card, label="c0"), randomization_panel(card), scorecard_panel(card)):
        assert image.width == PANEL_WIDTH and image.height >= 330
    failed = [m for m in card.methods if m != RANDOM and not card.randomization.passes(m)]
    red = (np.asarray(scorecard_panel(card)) == FAILED).all(-1).sum()
    assert (red > 0) == bool(failed)  # a FAIL is written in red, and only a FAIL
    with pytest.raises(ValueError, match="fill 'blur'"):
        curves_panel(card, "blur")
    assert plt.get_fignums() == []

    path = tmp_path / "m.safetensors"
    save_checkpoint(path, small, [f"c{i}" for i in range(10)], PRE)
    arr = np.zeros((28, 28), np.uint8)
    arr[6:22, 9:19] = 200
    Image.fromarray(arr).save(tmp_path / "item.png")
    main([str(tmp_path / "item.png"), "--checkpoint", str(path), "--out", str(tmp_path / "out"),
          "--no-attributions", "--baseline", "blur"])
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["faithfulness"]) == set(ALL_METHODS)
    assert {"deletion_auc", "insertion_auc", "randomization_spearman", "passes_randomization"} <= set(
        summary["faithfulness"]["random"])
    assert summary["faithfulness_settings"]["attribution_baseline"].startswith("the input blurred")
    assert sorted(p.name for p in (tmp_path / "out" / "faithfulness").iterdir()) == [
        "curves.png", "randomization.png", "scorecard.png"]
    assert {"faithfulness_curves.svg", "faithfulness_randomization.svg", "faithfulness_scorecard.svg"} <= {
        p.name for p in (tmp_path / "out" / "print").iterdir()}  # print quality: matplotlib's vector figures


@pytest.mark.dataset
def test_dataset_cli_averages_and_merges_shards(small, tmp_path, capsys):
    from rvt.data import DatasetError, load_fashion_mnist
    from rvt.faithfulness.__main__ import main
    try:
        load_fashion_mnist("test")
    except DatasetError:
        pytest.skip("Fashion-MNIST not installed (CI installs it)")
    path = tmp_path / "m.safetensors"
    save_checkpoint(path, small, [f"c{i}" for i in range(10)], PRE)
    for start in (0, 1):
        main(["--checkpoint", str(path), "--start", str(start), "--count", "1",
              "--json", str(tmp_path / f"{start}.json")])
    capsys.readouterr()
    main(["--merge", str(tmp_path / "0.json"), str(tmp_path / "1.json")])
    printed = capsys.readouterr().out
    assert printed.startswith("2 test images") and "| Attention rollout (mean)" in printed and "+embedding" in printed
    shards = [json.loads((tmp_path / f"{s}.json").read_text()) for s in (0, 1)]
    mean = (shards[0]["images"][0]["Saliency"]["deletion_auc"] + shards[1]["images"][0]["Saliency"]["deletion_auc"]) / 2
    assert f"| Saliency                   | {mean:.3f}" in printed
    with pytest.raises(SystemExit):
        main(["--count", "1"])  # no checkpoint


def test_the_scorecard_scores_the_maps_the_panels_show(small, bright):
    from rvt.capture import capture
    from rvt.faithfulness import explain
    from viz.attributions import attribute
    from viz.rollout import attention_rollout, cls_relevance
    x = bright.clone()
    x[..., 8:20, 10:18] = -0.5
    maps = explain(small, x, 2, PRE, ["Attention rollout (max)", "CLS attention (last layer)", "Saliency"])
    with torch.no_grad(), capture(small) as trace:
        small(x)
    rolled = cls_relevance(attention_rollout(trace.attention, "max")).view(7, 7)
    assert torch.allclose(maps["Attention rollout (max)"][0], rolled, atol=1e-6)
    assert torch.allclose(maps["CLS attention (last layer)"][0], trace.attention[-1, 0, :, 0, 1:].mean(0).view(7, 7))
    assert torch.equal(maps["Saliency"], attribute(small, x, 2, "Saliency", preprocess=PRE))

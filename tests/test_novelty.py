"""The "unlike my training data" notice: its arithmetic against independent code, its fallback, and
its published figures on generated sets with fixed seeds."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from test_preprocess import BUNDLED, as_uint8, fashion_mnist

from conftest import small_config
from rvt import Preprocess, RvT, load_checkpoint, save_checkpoint
from rvt.novelty import auroc, cls_features, features, fit, novelty, scores, stats_path
from rvt.photolike import non_garment_set, photo_like_set

AUROC_FLOOR = 0.95  # the target; measured 0.965 on these seeds (clean flagged 2.30%, non-garments 72.7%)
CLEAN_FLAG_CEILING = 0.05  # the target; the threshold sits at the held-out 98th percentile


def test_auroc_counts_pairs_with_ties_as_half():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 6, 40), rng.integers(0, 5, 30)
    pairs = [(p > n) + 0.5 * (p == n) for p in pos for n in neg]
    assert auroc(pos, neg) == pytest.approx(np.mean(pairs))
    assert auroc([2.0, 3.0], [0.0, 1.0]) == 1.0


@pytest.fixture
def tiny(tmp_path):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "tiny.safetensors", RvT(**small_config()), [f"c{i}" for i in range(10)],
                           Preprocess())
    return load_checkpoint(path, "cpu")


def photo(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    arr = np.full((60, 40), 230, np.uint8)
    arr[10:50, 8:32] = rng.integers(0, 120, (40, 24))
    return Image.fromarray(arr)


def test_cls_feature_is_the_heads_input(tiny):
    x = torch.randn(3, 1, 28, 28)
    feats, logits = features(tiny, x, batch=2)
    assert feats.shape == (3, tiny.config.dim)
    assert torch.allclose(tiny.model.mlp_head(feats), logits, atol=1e-5)
    with cls_features(tiny.model) as recorded:
        pass
    tiny.model(x)
    assert recorded == []  # the hook is gone after the block


def test_scores_match_independent_numpy(tiny):
    torch.manual_seed(1)
    train_x, held_x, test_x = torch.randn(200, 1, 28, 28), torch.randn(50, 1, 28, 28), torch.randn(7, 1, 28, 28)
    labels = torch.arange(200) % 10
    (train_f, _), (held_f, _), (test_f, _) = (features(tiny, x) for x in (train_x, held_x, test_x))
    stats = fit(tiny, train_f, train_x, labels, held_f, held_x, quantile=0.9, components=5)

    f, y = train_f.double().numpy(), labels.numpy()
    means = np.stack([f[y == k].mean(0) for k in range(10)])
    precision = np.linalg.pinv(np.cov((f - means[y]).T, bias=True))
    def feature_distance(g):
        return np.sqrt(min((g - m) @ precision @ (g - m) for m in means))
    pixels = train_x.double().flatten(1).numpy()
    _, _, vt = np.linalg.svd(pixels - pixels.mean(0), full_matrices=False)
    top = vt[:5].astype(np.float16).astype(np.float64)  # the statistics store components in half precision
    def pixel_error(p):
        c = p - pixels.mean(0)
        return np.linalg.norm(c - c @ top.T @ top)
    def distances(feats, xs):
        return np.array([[feature_distance(g), pixel_error(p)] for g, p in
                         zip(feats.double().numpy(), xs.double().flatten(1).numpy())])
    held = distances(held_f, held_x)
    standard = (distances(test_f, test_x) - held.mean(0)) / held.std(0, ddof=1)
    expected = standard.sum(1)
    assert np.allclose(stats.score(test_f, test_x).numpy(), expected, rtol=2e-3, atol=2e-3)
    held_scores = ((held - held.mean(0)) / held.std(0, ddof=1)).sum(1)
    assert stats.threshold == pytest.approx(np.quantile(held_scores, 0.9), rel=2e-3, abs=2e-3)


def test_without_statistics_the_score_is_energy_and_the_flag_unknown(tiny):
    result = tiny.novelty(photo())
    with torch.no_grad():
        logits = tiny.model(tiny.preprocess(photo())[None])[0]
    assert result.flag is None and result.threshold is None and result.method == "energy"
    assert result.score == pytest.approx(-float(torch.logsumexp(logits, -1)), abs=1e-5)
    assert "no novelty statistics" in result.reason


def test_statistics_are_found_beside_the_checkpoint_and_bound_to_its_weights(tiny, tmp_path):
    torch.manual_seed(2)
    x = torch.randn(100, 1, 28, 28)
    feats, _ = features(tiny, x)
    stats = fit(tiny, feats[:80], x[:80], torch.arange(80) % 10, feats[80:], x[80:], components=4)
    stats.save(stats_path(tiny.source))
    fresh = load_checkpoint(tiny.source, "cpu")
    result = novelty(fresh, photo(1))
    x1 = fresh.preprocess(photo(1))[None]
    with torch.no_grad():
        f1, _ = features(fresh, x1)
    assert result.method == "mahalanobis+pca" and result.flag == (result.score > stats.threshold)
    assert result.score == pytest.approx(float(stats.score(f1, x1)[0]), abs=1e-3)
    assert set(result.parts) == {"model feature distance", "image reconstruction error"}

    other = tmp_path / "other"
    other.mkdir()
    torch.manual_seed(3)
    path = save_checkpoint(other / "tiny.safetensors", RvT(**small_config()), [f"c{i}" for i in range(10)],
                           Preprocess())
    shutil.copy(stats_path(tiny.source), stats_path(path))
    stranger = novelty(load_checkpoint(path, "cpu"), photo(1))
    assert stranger.flag is None and "different weights" in stranger.reason


@pytest.fixture(scope="module")
def bundled_scores():
    images, labels = fashion_mnist("test")
    bundle = load_checkpoint(BUNDLED, "cpu")
    assert stats_path(BUNDLED).is_file(), "the bundled checkpoint's novelty statistics are missing"
    uploads, _ = photo_like_set(as_uint8(images), labels.numpy(), 300, seed=11)
    others = non_garment_set(300, seed=12)
    # 4,000 clean images keep CI short (rvt.evaluate --ood reports all 10,000); the same tensors as the user
    # path, proven bit for bit in test_preprocess.
    out = {"clean": scores(bundle, bundle.preprocess.normalize(images[:4000]))}
    for name, images in (("photo_like", uploads), ("non_garment", others)):
        out[name] = scores(bundle, torch.stack([bundle.preprocess(image) for image in images]))
    return {name: (s.numpy(), stats) for name, (s, _, stats) in out.items()}


@pytest.mark.dataset
def test_bundled_notice_separates_non_garments(bundled_scores):
    clean, stats = bundled_scores["clean"]
    assert stats is not None
    assert auroc(bundled_scores["non_garment"][0], clean) >= AUROC_FLOOR
    assert (clean > stats.threshold).mean() <= CLEAN_FLAG_CEILING
    assert (bundled_scores["non_garment"][0] > stats.threshold).mean() >= 0.5
    assert (bundled_scores["photo_like"][0] > stats.threshold).mean() <= 0.10  # photos of garments mostly pass


def test_cli_writes_statistics_from_an_image_folder(tiny, tmp_path):
    from rvt.novelty import main
    rng = np.random.default_rng(0)
    for k in range(10):
        folder = tmp_path / "data" / f"c{k}"
        folder.mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(folder / f"{i}.png")
    main(["--checkpoint", tiny.source, "--image-folder", str(tmp_path / "data"), "--device", "cpu",
          "--val-fraction", "0.25"])
    assert stats_path(tiny.source).is_file()
    assert novelty(load_checkpoint(tiny.source, "cpu"), photo()).method == "mahalanobis+pca"

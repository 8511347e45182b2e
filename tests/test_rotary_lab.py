import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import small_config
from rvt import RvT, capture, intervene
from rvt.analysis import analyze
from rvt.budget import estimate_bytes
from rvt.checkpoint import Bundle
from rvt.preprocess import Preprocess
from rvt.rotary import AxialRotaryEmbedding, apply_rotary
from rvt.rotary_lab import (
    YarnRamp,
    band_ablation,
    band_energy,
    band_usage,
    build_schedule,
    fast_pairs,
    head_kernel,
    head_kernels,
    ideal_kernel,
    kernel_cuts,
    lab_bands,
    lab_view,
    mixed_schedule,
    model_schedule,
    resolution_sweep,
    rope_mixed_frequencies,
    rope_schedule,
    rvt_schedule,
    scale_schedule,
    score_kernel,
    steps,
    tables,
    wrap,
)
from viz.render import figure_to_image
from viz.rotary import kernel_figure as model_kernel_figure
from viz.rotary import nyquist_figure, rotary_kernel
from viz.rotary_lab import (
    LESSON,
    ablation_figure,
    kernel_figure,
    phase_figure,
    steps_figure,
    sweep_figure,
    usage_figure,
)
from viz.stats import attention_entropy


@pytest.mark.parametrize("dim_head,max_freq,n", [(24, 28, 7), (64, 224, 14), (16, 28, 7), (26, 30, 5), (4, 10, 3)])
def test_rvt_schedule_reproduces_the_seed_tables_exactly(reference, dim_head, max_freq, n):
    sin, cos = reference.AxialRotaryEmbedding(dim_head, max_freq)(torch.zeros(1, n * n, dim_head))
    ours = tables(rvt_schedule(dim_head, max_freq), (n, n))
    assert torch.equal(ours[0], sin[0]) and torch.equal(ours[1], cos[0])
    # Non-square grids, which the seed cannot make: against this project's module (itself seed-exact).
    module = AxialRotaryEmbedding(dim_head, max_freq)
    for grid in ((n, n + 3), (2, 9)):
        expected = module(grid)
        got = tables(rvt_schedule(dim_head, max_freq), grid)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_model_schedule_is_the_models_own_tables():
    model = RvT(**small_config(image_size=32, dim_head=16))
    for grid in ((8, 8), (4, 11)):
        sin, cos = model.transformer.pos_emb(grid)
        got = tables(model_schedule(model), grid)
        assert torch.equal(got[0], sin) and torch.equal(got[1], cos)
    with pytest.raises(ValueError, match="use_rotary=False"):
        model_schedule(RvT(**small_config(use_rotary=False)))


def test_rope_schedule_matches_the_standard_formula():
    dim_head, base, (h, w) = 16, 100.0, (3, 5)
    sin, cos = tables(rope_schedule(dim_head, base), (h, w))
    for r in range(h):
        for c in range(w):
            for i in range(dim_head // 4):
                theta = base ** (-4 * i / dim_head)  # RoPE-ViT: 1 / theta ** (arange(0, dim, 4) / dim)
                for pair, position in ((i, r), (dim_head // 4 + i, c)):
                    for dim in (2 * pair, 2 * pair + 1):
                        assert sin[r * w + c, dim].item() == pytest.approx(math.sin(position * theta), abs=1e-6)
                        assert cos[r * w + c, dim].item() == pytest.approx(math.cos(position * theta), abs=1e-6)


def test_mixed_schedule_directions_and_checkpoint_frequencies():
    a, b = mixed_schedule(16, 10.0, seed=3), mixed_schedule(16, 10.0, seed=3)
    assert torch.equal(a.scales, b.scales) and not torch.equal(a.scales, mixed_schedule(16, 10.0, seed=4).scales)
    # RoPE-ViT's init: the two halves rotate along perpendicular directions with RoPE's magnitudes.
    first, second = a.scales[:4].double(), a.scales[4:].double()
    assert torch.allclose((first * second).sum(-1), torch.zeros(4, dtype=torch.float64), atol=1e-6)
    magnitudes = 10.0 ** (-torch.arange(0, 16, 4, dtype=torch.float64) / 16)
    assert torch.allclose(first.norm(dim=-1), magnitudes, atol=1e-6)
    # A RoPE-ViT checkpoint keeps (2, depth, heads * pairs) as (x, y); the angle is x * fx + y * fy.
    freqs = torch.randn(2, 3, 2 * 8)
    chosen = rope_mixed_frequencies({"module.freqs": freqs}, layer=1, head=1, heads=2)
    assert torch.equal(chosen, freqs[:, 1, 8:])
    sin, cos = tables(mixed_schedule(16, freqs=chosen), (3, 4))
    y, x = 2, 3
    expected = x * chosen[0] + y * chosen[1]
    assert torch.allclose(sin[y * 4 + x, ::2], expected.sin(), atol=1e-5)
    with pytest.raises(ValueError, match="no `freqs`"):
        rope_mixed_frequencies({}, 0, 0, 2)


def test_wrapped_step_of_the_bundled_models_bands():
    result = lab_bands("rvt", 7, 7, 24, 28)
    row = {b["band"]: b for b in result["bands"] if b["axis"] == "row"}
    scale = 1 + 2 * (14 - 1) / 5  # linspace(1, 14, 6)[2]
    assert row[2]["step"] == pytest.approx(scale * math.pi * 2 / 6, abs=1e-5)  # 6.49 rad
    assert row[2]["wrapped_step"] == pytest.approx(scale * math.pi / 3 - 2 * math.pi, abs=1e-5)  # 0.21 rad
    assert row[2]["aliases"] and not row[0]["aliases"]
    assert result["aliasing"] == {"row": 5, "col": 5}
    assert len(result["bands"]) == 12 and {b["axis"] for b in result["bands"]} == {"row", "col"}
    assert all(0 <= b["wrapped_step"] <= math.pi for b in result["bands"])
    json.dumps(result)
    assert lab_bands("rvt", 14, 14, 64, 224)["aliasing"] == {"row": 15, "col": 15}  # only band 0 below pi
    assert lab_bands("rvt", 14, 14, 24, 28)["aliasing"] == {"row": 3, "col": 3}  # RvT interpolates
    assert lab_bands("rvt", 7, 14, 24, 28)["aliasing"] == {"row": 5, "col": 3}
    steps_ = torch.tensor([0.0, 3.0, math.pi, 4.0, 2 * math.pi + 0.5, -0.5])
    assert torch.allclose(wrap(steps_), torch.tensor([0.0, 3.0, math.pi, 2 * math.pi - 4.0, 0.5, 0.5],
                                                     dtype=torch.float64), atol=1e-9)


@pytest.mark.parametrize("bad,match", [({"rows": 0}, "grid"), ({"cols": 65}, "grid"), ({"dim_head": 3}, "dim_head"),
                                       ({"dim_head": 1000}, "dim_head"), ({"schedule": "alibi"}, "schedule"),
                                       ({"value": 0.5}, "max_freq"), ({"schedule": "rope", "value": 1.0}, "base"),
                                       ({"rows": 2.5}, "grid")])
def test_lab_bands_refuses_bad_input_with_a_message(bad, match):
    args = {"schedule": "rvt", "rows": 7, "cols": 7, "dim_head": 24, "value": 28.0} | bad
    with pytest.raises(ValueError, match=match):
        lab_bands(args["schedule"], args["rows"], args["cols"], args["dim_head"], args["value"])


@pytest.mark.parametrize("schedule", [rvt_schedule(24, 28), rope_schedule(32, 100), mixed_schedule(16, 10, 1)])
def test_idealised_kernel_is_one_at_zero_offset_and_symmetric(schedule):
    kernel = ideal_kernel(schedule, (5, 8))
    assert kernel.shape == (9, 15)
    assert kernel[4, 7].item() == pytest.approx(1.0, abs=1e-12)
    assert torch.allclose(kernel, kernel.flip(0).flip(1), atol=1e-12)
    assert kernel.abs().max() <= 1 + 1e-12
    cuts = kernel_cuts(kernel)
    assert torch.equal(cuts["row"][1], kernel[:, 7]) and cuts["diagonal"][1][4].item() == pytest.approx(1.0)


def test_idealised_kernel_agrees_with_the_model_panel_kernel():
    schedule, grid = rvt_schedule(16, 28), (5, 6)
    sin, cos = tables(schedule, grid)
    kernel = ideal_kernel(schedule, grid)
    for query in (0, 14, 29):
        qr, qc = divmod(query, 6)
        by_patch = rotary_kernel(sin, cos, query).reshape(5, 6)
        for r in range(5):
            for c in range(6):
                assert by_patch[r, c].item() == pytest.approx(kernel[r - qr + 4, c - qc + 5].item(), abs=1e-5)


def test_head_kernels_match_rotated_scores():
    torch.manual_seed(0)
    schedule, grid, d = rvt_schedule(16, 28), (3, 4), 18  # two dims past the rotated 16 pass through
    sin, cos = tables(schedule, grid)
    q0, k0 = torch.randn(d), torch.randn(d)
    n = grid[0] * grid[1]
    q = torch.cat((torch.randn(1, d), q0.expand(n, d)))  # CLS first, then every patch the same
    k = torch.cat((torch.randn(1, d), k0.expand(n, d)))
    q_rot = torch.cat((q[:1], apply_rotary(q[1:], sin, cos)))
    k_rot = torch.cat((k[:1], apply_rotary(k[1:], sin, cos)))
    kernel = head_kernel(q, k, schedule, grid)
    bound = (q0[:16].unflatten(0, (8, 2)).norm(dim=-1) * k0[:16].unflatten(0, (8, 2)).norm(dim=-1)).sum()
    rotated_only = q_rot[1:, :16] @ k_rot[1:, :16].T  # (N, N) the rotated dims' share of the score
    for i in range(n):
        for j in range(n):
            dr, dc = j // 4 - i // 4, j % 4 - i % 4
            assert (kernel[dr + 2, dc + 3] * bound).item() == pytest.approx(rotated_only[i, j].item(), abs=1e-4)
    # score_kernel: the mean logit over all patch pairs at an offset, against a plain loop.
    q_rot, k_rot = torch.randn(1 + n, d), torch.randn(1 + n, d)
    scores = score_kernel(q_rot, k_rot, grid)
    logits = q_rot[1:] @ k_rot[1:].T * d ** -0.5
    for dr, dc in ((0, 0), (1, -2), (-2, 3), (2, -3)):
        values = [logits[i, j] for i in range(n) for j in range(n) if (j // 4 - i // 4, j % 4 - i % 4) == (dr, dc)]
        assert scores[dr + 2, dc + 3].item() == pytest.approx(torch.stack(values).mean().item(), abs=1e-5)


def test_band_energies_sum_to_the_rotated_energy_and_survive_rotation(twin):
    _, model = twin(dim_head=18, heads=2)  # 16 rotated dims, 2 passed through
    with torch.no_grad(), capture(model, qk=True) as trace:
        model(torch.randn(2, 1, 28, 28))
    q, k = trace.qk("q"), trace.qk("k")
    energy = band_energy(q, k, pairs=8)
    assert energy["q"].shape == (2, 2, 8)
    assert torch.allclose(energy["q"].sum(-1), energy["q_rotated"], rtol=1e-10)
    assert torch.allclose(energy["k"].sum(-1), energy["k_rotated"], rtol=1e-10)
    direct = q[..., 1:, :16].double().pow(2).sum(-1).mean(dim=(1, 3))  # (L, H) over batch and patches
    assert torch.allclose(energy["q_rotated"], direct, rtol=1e-10)
    rotated = band_energy(trace.qk("q_rot"), trace.qk("k_rot"), pairs=8)  # rotation keeps each pair's norm
    assert torch.allclose(rotated["q"], energy["q"], rtol=1e-4)
    assert torch.allclose(energy["usage"].sum(-1), torch.ones(2, 2, dtype=torch.float64))


def test_fast_pairs_rank_by_wrapped_step_and_roles_follow_the_rule():
    schedule = rvt_schedule(24, 28)
    fast = fast_pairs(schedule, (7, 7))
    # wrapped steps 1.05, 2.51, 0.21, 2.93, 0.63, 2.09: bands 1, 3, 5 are the fast half on both axes
    assert fast.tolist() == [False, True, False, True, False, True] * 2
    from rvt.rotary_lab import head_roles
    usage = torch.zeros(1, 3, 12, dtype=torch.float64)
    usage[0, 0, 1], usage[0, 1, 0], usage[0, 2, [0, 1]] = 1.0, 1.0, 0.5
    share, labels = head_roles(usage, fast)
    assert share[0].tolist() == [1.0, 0.0, 0.5] and labels == [["positional", "semantic", "mixed"]]


def test_scaling_switches():
    rope, train, grid = rope_schedule(16, 100.0), (8, 8), (15, 15)
    s = (15 - 1) / (8 - 1)  # 2
    base_steps = steps(rope, grid)
    assert torch.allclose(steps(scale_schedule(rope, train, grid, "pi"), grid), base_steps / s, rtol=1e-6)
    # NTK-aware: the same as RoPE with base * s ** (D / (D - 2)), D = 8 rotated dims per axis.
    ntk = steps(scale_schedule(rope, train, grid, "ntk"), grid)
    assert torch.allclose(ntk, steps(rope_schedule(16, 100.0 * s ** (8 / 6)), grid), rtol=1e-5)
    assert ntk.max() == pytest.approx(base_steps.max().item())  # the fastest band is kept
    # YaRN: every band interpolated below alpha turns, kept above beta.
    assert torch.allclose(steps(scale_schedule(rope, train, grid, "yarn", YarnRamp(100, 200)), grid), base_steps / s)
    assert torch.allclose(steps(scale_schedule(rope, train, grid, "yarn", YarnRamp(0.0, 1e-3)), grid), base_steps)
    # A smaller grid is not rescaled; RvT takes no integer-position scaling.
    assert torch.equal(scale_schedule(rope, train, (4, 4), "pi").scales, rope.scales)
    with pytest.raises(ValueError, match="already interpolated"):
        scale_schedule(rvt_schedule(24, 28), (7, 7), (14, 14), "ntk")
    view = lab_view(rope, grid, train)
    assert any(b["unseen_angles"] for b in view.bands)  # extrapolation reaches angles training never did
    assert not any(b["unseen_angles"] for b in lab_view(rope, grid, train, "pi").bands)


def test_bands_off_switches_off_single_pairs(twin):
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    for model in twin(dim_head=16):  # vit-pytorch's and ours
        with torch.no_grad(), capture(model, qk=True) as plain:
            model(x)
        with torch.no_grad(), capture(model, qk=True) as off, intervene(model, bands_off={0: [1, ("col", 3)]}):
            model(x)
        q, q_plain, q_off = plain.qk("q")[0], plain.qk("q_rot")[0], off.qk("q_rot")[0]
        # 4 bands: row band 1 is pair 1 (dims 2, 3), column band 1 pair 5 (10, 11), column band 3 pair 7 (14, 15).
        identity = [2, 3, 10, 11, 14, 15]
        rotated = [d for d in range(16) if d not in identity]
        assert torch.allclose(q_off[..., 1:, identity], q[..., 1:, identity], atol=1e-6)
        assert torch.allclose(q_off[..., rotated], q_plain[..., rotated], atol=1e-6)
        sin, cos = tables(model_schedule(model), (7, 7))  # layer 1 keeps its full rotation
        assert torch.allclose(off.qk("q_rot")[1][..., 1:, :], apply_rotary(off.qk("q")[1][..., 1:, :], sin, cos),
                              atol=1e-5)
        with torch.no_grad(), intervene(model, bands_off={0: range(4), 1: [0, 1, 2, 3]}):
            all_off = model(x)
        with torch.no_grad(), intervene(model, rotary_off=[0, 1]):
            assert torch.allclose(all_off, model(x), atol=1e-6)
        assert all(not m._forward_pre_hooks for m in model.modules())
    for bad in ({0: [4]}, {0: [("diag", 1)]}, {0: ["row"]}, {7: [0]}):
        with pytest.raises(ValueError, match="band|out of range"):
            with intervene(model, bands_off=bad):
                pass


@pytest.fixture(scope="module")
def bundle():
    torch.manual_seed(0)
    model = RvT(**small_config(depth=2, heads=2, dim_head=16)).eval()
    return Bundle(model=model, labels=[f"class {i}" for i in range(10)], config=model.config,
                  preprocess=Preprocess(image_size=(28, 28)), device=torch.device("cpu"))


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((28, 28)) * 255).astype(np.uint8))


def test_band_usage_and_ablation_on_a_model(bundle, image):
    analysis = analyze(bundle, image)
    kernels = head_kernels(analysis, model_schedule(bundle.model), layer=1, head=1)
    q, k = analysis.trace.qk("q")[1, 0, 1], analysis.trace.qk("k")[1, 0, 1]
    assert torch.equal(kernels["mean_qk"], head_kernel(q, k, model_schedule(bundle.model), (7, 7)))
    assert kernels["scores"].shape == (13, 13) and "layer 1, head 1" in kernels["title"]
    assert kernel_figure(lab_view(model_schedule(bundle.model), (7, 7)), kernels).width == 700
    with pytest.raises(ValueError, match="not in this analysis"):
        head_kernels(analysis, model_schedule(bundle.model), layer=2, head=0)
    usage = band_usage(analysis, model_schedule(bundle.model))
    assert usage["usage"].shape == (2, 2, 8) and len(usage["roles"]) == 2 and len(usage["pair_labels"]) == 8
    same = band_ablation(bundle, analysis, {})
    assert same["attention_change"].abs().max() < 1e-5 and same["after"][0][0] == same["before"][0][0]
    changed = band_ablation(bundle, analysis, {0: [0, 1, 2, 3], 1: [0, 1, 2, 3]})
    assert torch.allclose(changed["analysis"].probs, analyze(bundle, image, rotary_off=[0, 1]).probs, atol=1e-5)
    assert changed["attention_change"].shape == (2, 2) and changed["attention_change"].max() > 1e-3


def test_resolution_sweep_progress_check_and_budget(bundle, image):
    seen = []
    sweep = resolution_sweep(bundle, image, scales=(0.5, 1.0, 2.0, (1.0, 2.0)), progress=seen.append)
    assert [r["grid"] for r in sweep["rows"]] == [[4, 4], [7, 7], [14, 14], [7, 14]]
    assert seen == [0.25, 0.5, 0.75, 1.0]
    row = sweep["rows"][1]
    assert row["label"] == analyze(bundle, image).top(1)[0][0] and len(row["entropy"]) == 2
    assert all(0 < v <= 1 + 1e-6 for r in sweep["rows"] for v in r["entropy_share"])
    calls = []

    def stop():
        calls.append(1)
        if len(calls) == 2:
            raise InterruptedError("stopped")

    with pytest.raises(InterruptedError):
        resolution_sweep(bundle, image, scales=(1.0, 2.0, 3.0), check=stop)
    small = resolution_sweep(bundle, image, scales=(1.0, 4.0), budget=estimate_bytes(bundle.config, (56, 56)))
    assert [r["grid"] for r in small["rows"]] == [[7, 7]] and small["skipped"][0]["grid"] == [28, 28]
    assert "memory budget" in small["skipped"][0]["reason"]
    # The recorded statistics are the stored attention's (viz.stats computes them independently).
    full = analyze(bundle, image, (56, 56))
    entropy = attention_entropy(full.trace.attention).mean(-1)
    assert torch.allclose(torch.tensor(sweep["rows"][2]["entropy"]), entropy, atol=1e-5)
    with pytest.raises(ValueError, match="sweep scale"):
        resolution_sweep(bundle, image, scales=(0.0,))
    assert sweep_figure(sweep).width == 700


def test_lab_figures_render_and_follow_the_controls():
    a = lab_view(build_schedule("rvt", 24, 28), (7, 7))
    b = lab_view(build_schedule("rvt", 24, 28), (14, 14), (7, 7))
    c = lab_view(build_schedule("mixed", 16, 10), (5, 9))
    d = lab_view(build_schedule("rope", 32, 100), (12, 12), (6, 6), "yarn")
    for figure in (phase_figure, steps_figure, kernel_figure):
        images = [np.asarray(figure(view)) for view in (a, b, c, d)]
        assert all(im.shape[1] == 700 and im.shape[0] > 100 for im in images)
        assert not np.array_equal(images[0][:200], images[1][:200])
    head = {"title": "layer 0, head 0", "mean_qk": a.kernel * 0.5, "scores": a.kernel}
    assert kernel_figure(a, head).width == 700
    usage = {"usage": torch.rand(3, 2, 12), "fast": fast_pairs(a.schedule, a.grid), "fast_share": torch.rand(3, 2),
             "roles": [["mixed", "semantic"]] * 3, "layers": [0, 1, 2],
             "pair_labels": [a.schedule.pair_label(p) for p in range(12)]}
    assert usage_figure(usage).width == 700
    ablation = {"before": [("a", 0.9), ("b", 0.1)], "after": [("b", 0.6), ("a", 0.4)],
                "attention_change": torch.rand(3, 2)}
    assert ablation_figure(ablation).width == 700


def test_model_panels_still_render_with_wrapped_steps():
    module = AxialRotaryEmbedding(24, 28)
    sin, cos = module((7, 7))
    assert figure_to_image(nyquist_figure(module.scales, (7, 7), (14, 14))).width > 500
    qk = {name: torch.randn(50, 24) for name in ("q", "k", "q_rot", "k_rot")}
    assert figure_to_image(model_kernel_figure(sin, cos, (7, 7), (3, 3), qk, "layer 0, head 0")).width > 500


def test_every_lesson_step_drives_the_lab():
    assert [step["title"][0] for step in LESSON] == [str(i) for i in range(1, len(LESSON) + 1)]
    for step in LESSON:
        settings = dict(step["settings"])
        result = lab_bands(settings.pop("schedule"), settings.pop("rows"), settings.pop("cols"),
                           settings.pop("dim_head"), settings.pop("max_freq_or_base"), **settings)
        assert result["bands"] and step["look"]


@pytest.mark.parametrize("grid", [(1, 16), (2, 64), (3, 64), (64, 1)])
def test_the_kernel_figure_draws_flat_and_tall_grids(grid):
    image = kernel_figure(lab_view(build_schedule("rvt", 24, 28), grid))
    assert image.size[0] == 700 and image.size[1] >= 200

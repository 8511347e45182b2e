import inspect
import itertools
from math import pi
from unittest import mock

import pytest
import torch
import torch.nn.functional as F

from conftest import small_config
from rvt import RvT, RvTConfig
from rvt.rotary import AxialRotaryEmbedding, apply_rotary


@pytest.mark.parametrize("use_rotary,use_ds_conv,use_glu", list(itertools.product([True, False], repeat=3)))
def test_matches_reference_for_every_flag_combination(twin, use_rotary, use_ds_conv, use_glu):
    ref, ours = twin(use_rotary=use_rotary, use_ds_conv=use_ds_conv, use_glu=use_glu)
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max() <= 1e-5


@pytest.mark.parametrize("depth,heads,dim_head,batch,image,patch,channels", [
    (1, 1, 8, 1, 16, 4, 3),
    (3, 4, 16, 2, 32, 8, 3),
    (2, 3, 6, 5, 28, 4, 1),   # dim_head not a multiple of 4: part of each head is not rotated
    (4, 2, 32, 1, 28, 7, 1),
])
def test_matches_reference_across_sizes(twin, depth, heads, dim_head, batch, image, patch, channels):
    ref, ours = twin(depth=depth, heads=heads, dim_head=dim_head, image_size=image, patch_size=patch,
                     channels=channels, dim=24)
    x = torch.randn(batch, channels, image, image)
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max() <= 1e-5


def test_fused_and_explicit_paths_agree():
    torch.manual_seed(0)
    model = RvT(**small_config(depth=3, heads=4)).eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        fused = model(x)
        for layer in model.transformer.layers:
            layer[0].fused = False
        explicit = model(x)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_fast_path_is_sdpa_outside_capture():
    model = RvT(**small_config()).eval()
    with mock.patch("rvt.model.F.scaled_dot_product_attention", wraps=F.scaled_dot_product_attention) as sdpa:
        model(torch.randn(1, 1, 28, 28))
    assert sdpa.call_count == model.config.depth


def test_non_square_input_uses_true_grid():
    torch.manual_seed(0)
    model = RvT(**small_config()).eval()
    x = torch.randn(2, 1, 12, 32)  # a 3x8 grid
    with torch.no_grad():
        out = model(x)
    assert out.shape == (2, 10)
    sin, cos = model.transformer.pos_emb((3, 8))
    bands = model.transformer.pos_emb.num_bands
    # First half of the rotary dims varies with the row only, second half with the column only.
    phase = torch.atan2(sin, cos).reshape(3, 8, -1)
    rows, cols = phase[..., : 2 * bands], phase[..., 2 * bands:]
    assert torch.allclose(rows, rows[:, :1].expand_as(rows))
    assert torch.allclose(cols, cols[:1].expand_as(cols))
    scales = model.transformer.pos_emb.scales
    expected_row = torch.linspace(-1, 1, 3)[:, None] * scales * pi  # (h, bands)
    assert torch.allclose(sin.reshape(3, 8, -1)[:, 0, : 2 * bands : 2], expected_row.sin(), atol=1e-5)
    # Transposing the image transposes the grid: rows and columns must not be swapped internally.
    assert not torch.allclose(model.transformer.pos_emb((8, 3))[0], sin)


def test_any_resolution_and_reference_equality_at_other_square_sizes(twin):
    ref, ours = twin()
    x = torch.randn(2, 1, 44, 44)  # trained for 28, run at 44: rotary has no fixed table
    with torch.no_grad():
        assert (ref(x) - ours(x)).abs().max() <= 1e-5


def test_bad_input_size_is_explained():
    model = RvT(**small_config())
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        model(torch.randn(1, 1, 30, 28))


def test_rotary_preserves_norms_and_depends_only_on_offsets():
    emb = AxialRotaryEmbedding(dim_head=16, max_freq=28)
    sin, cos = emb((4, 4))
    q, k = torch.randn(16), torch.randn(16)
    qr, kr = apply_rotary(q.expand(16, 16), sin, cos), apply_rotary(k.expand(16, 16), sin, cos)
    assert torch.allclose(qr.norm(dim=-1), q.norm().expand(16), atol=1e-5)
    dots = (qr[:, None] * kr[None]).sum(-1).reshape(4, 4, 4, 4)
    # same offset (1, 1) from two different query positions gives the same score
    assert torch.allclose(dots[0, 0, 1, 1], dots[2, 2, 3, 3], atol=1e-4)


def test_keyword_constructor_is_vit_pytorchs(reference):
    """Same keywords, same required ones, same defaults: derived from RvTConfig, compared to the reference."""
    ours = inspect.signature(RvT).parameters
    theirs = inspect.signature(reference.RvT).parameters
    assert [p for p in ours if p != "config"] == list(theirs)
    for name, p in theirs.items():
        assert ours[name].default == p.default and ours[name].kind == p.kind == inspect.Parameter.KEYWORD_ONLY, name
    with pytest.raises(TypeError, match=r"missing required keywords \['mlp_dim'\]"):
        RvT(**{k: v for k, v in small_config().items() if k != "mlp_dim"})
    with pytest.raises(TypeError, match=r"unknown keywords \['depht'\]"):
        RvT(**small_config(), depht=3)
    assert RvT(**small_config(channels=3)).config.dim_head == 16
    assert RvT(**{k: v for k, v in small_config().items() if k not in ("channels", "dim_head")}).config.channels == 3


def test_config_and_keywords_build_the_same_model():
    config = RvTConfig(**small_config(use_glu=False))
    torch.manual_seed(0)
    a = RvT(config)
    torch.manual_seed(0)
    b = RvT(**small_config(use_glu=False))
    assert a.config == b.config == config
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    with pytest.raises(TypeError, match="not both"):
        RvT(config, dim=8)


@pytest.mark.parametrize("bad,error", [
    (dict(dim=4.5), "dim must be int, not 4.5"), (dict(depth=True), "depth must be int, not True"),
    (dict(use_glu=1), "use_glu must be bool"), (dict(dim=0), "dim must be at least 1"),
    (dict(dropout=float("nan")), "dropout is a probability"), (dict(patch_size=5), "divisible by patch_size 5"),
])
def test_config_refuses_values_no_model_has(bad, error):
    with pytest.raises((TypeError, ValueError), match=error):
        RvTConfig(**bad)

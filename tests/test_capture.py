import pytest
import torch

from conftest import small_config
from rvt import RvT, capture, intervene


def test_capture_shapes_and_probabilities(twin):
    _, model = twin(depth=3, heads=4)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), capture(model) as trace:
        logits = model(x)
    assert trace.attention.shape == (3, 2, 4, 50, 50)
    assert torch.allclose(trace.attention.sum(-1), torch.ones(3, 2, 4, 50), atol=1e-5)
    assert trace.grid == (7, 7)
    assert torch.equal(trace.logits, logits)
    sin, cos = trace.rotary
    assert sin.shape == cos.shape == (49, 16)
    assert torch.allclose(sin ** 2 + cos ** 2, torch.ones_like(sin), atol=1e-5)


def test_capture_on_unmodified_vit_pytorch_model_matches_ours(twin):
    ref, ours = twin(heads=3)
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad(), capture(ref) as a, capture(ours) as b:
        ref(x)
        ours(x)
    assert a.attention.shape == (2, 2, 3, 50, 50)
    assert torch.allclose(a.attention, b.attention, atol=1e-6)
    assert torch.allclose(a.rotary[0], b.rotary[0])


def test_qk_before_and_after_rotation_reproduce_attention(twin):
    ref, ours = twin(heads=2, dim_head=16)
    x = torch.randn(1, 1, 28, 28)
    for model in (ref, ours):
        with torch.no_grad(), capture(model, qk=True) as trace:
            model(x)
        q, k = trace.qk("q_rot"), trace.qk("k_rot")
        assert q.shape == (2, 1, 2, 50, 16)
        probs = (q @ k.transpose(-1, -2) * 16 ** -0.5).softmax(-1)
        assert torch.allclose(probs, trace.attention, atol=1e-5)
        # CLS is not rotated; patches are, and rotation keeps norms
        assert torch.equal(trace.qk("q")[..., 0, :], q[..., 0, :])
        assert not torch.allclose(trace.qk("q")[..., 1:, :], q[..., 1:, :])
        assert torch.allclose(trace.qk("k").norm(dim=-1), k.norm(dim=-1), atol=1e-4)


def test_memory_options_layers_cls_only_dtype(twin):
    _, model = twin(depth=3)
    with torch.no_grad(), capture(model, layers=[2, 0], cls_only=True, dtype=torch.float16) as trace:
        model(torch.randn(2, 1, 28, 28))
    assert trace.layers == [0, 2]
    assert trace.attention.shape == (2, 2, 2, 1, 50)
    assert trace.attention.dtype == torch.float16
    with pytest.raises(ValueError, match="out of range"):
        with capture(model, layers=[5]):
            pass


def test_hooks_removed_and_fast_path_restored_after_exception(twin):
    _, model = twin()
    modules = list(model.modules())
    with pytest.raises(ValueError, match="multiple of the patch size"):
        with capture(model, qk=True):
            model(torch.randn(1, 1, 30, 30))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in modules)
    assert all(layer[0].fused for layer in model.transformer.layers)


def test_errors_in_the_body_propagate_and_hooks_go(twin):
    ref, _ = twin()
    with pytest.raises(KeyError):
        with capture(ref):
            raise KeyError("boom")
    assert all(not m._forward_hooks for m in ref.modules())


def test_two_models_captured_at_once_do_not_interfere():
    torch.manual_seed(0)
    a, b = RvT(**small_config()).eval(), RvT(**small_config(heads=3, depth=1)).eval()
    with torch.no_grad(), capture(a) as ta, capture(b) as tb:
        a(torch.randn(1, 1, 28, 28))
        b(torch.randn(2, 1, 16, 24))
    assert ta.attention.shape == (2, 1, 2, 50, 50) and ta.grid == (7, 7)
    assert tb.attention.shape == (1, 2, 3, 25, 25) and tb.grid == (4, 6)


def test_attention_gradients(twin):
    _, model = twin()
    x = torch.randn(1, 1, 28, 28, requires_grad=True)
    with capture(model, grads=True) as trace:
        logits = model(x)
    logits[0, 3].backward()
    assert trace.attention_grad.shape == trace.attention.shape
    assert trace.attention_grad.abs().sum() > 0


def test_not_an_rvt_is_refused():
    with pytest.raises(TypeError, match="not an RvT"):
        with capture(torch.nn.Linear(2, 2)):
            pass


def test_silencing_heads_zeroes_their_contribution(twin):
    ref, ours = twin(depth=2, heads=2)
    x = torch.randn(2, 1, 28, 28)
    for model in (ref, ours):
        block = model.transformer.layers[1][0]
        seen = []
        handle = block.to_out.register_forward_pre_hook(lambda m, a, seen=seen: seen.append(a[0]))
        try:
            with torch.no_grad(), intervene(model, heads_off={1: [0]}):
                changed = model(x)
        finally:
            handle.remove()
        assert torch.all(seen[0][..., :16] == 0) and seen[0][..., 16:].abs().sum() > 0
        with torch.no_grad():
            assert not torch.allclose(changed, model(x))
        assert all(not m._forward_pre_hooks for m in model.modules())


def test_rotary_off_equals_a_model_built_without_rotary(twin):
    ref, ours = twin()
    plain = RvT(**small_config(use_rotary=False)).eval()
    plain.load_state_dict(ours.state_dict())
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        expected = plain(x)
        for model in (ref, ours):
            with intervene(model, rotary_off=[0, 1]):
                assert torch.allclose(model(x), expected, atol=1e-5)


def test_capture_sees_the_intervention(twin):
    _, model = twin()
    x = torch.randn(1, 1, 28, 28)
    with torch.no_grad(), capture(model, qk=True) as trace, intervene(model, rotary_off=[0]):
        model(x)
    assert torch.equal(trace.qk("q")[0], trace.qk("q_rot")[0])
    assert not torch.equal(trace.qk("q")[1], trace.qk("q_rot")[1])


def test_intervention_validates():
    model = RvT(**small_config())
    with pytest.raises(ValueError, match="heads \\[7\\] out of range"):
        with intervene(model, heads_off={0: [7]}):
            pass

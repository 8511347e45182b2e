import math
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from conftest import small_config
from rvt import CheckpointError, Preprocess, RvT, RvTConfig, load_checkpoint, save_checkpoint
from rvt.checkpoint import ModelLimits, expected_shapes


def test_project_format_round_trip(tmp_path):
    torch.manual_seed(0)
    model = RvT(**small_config()).eval()
    labels = [f"thing {i}" for i in range(10)]
    pre = Preprocess(mean=[0.3], std=[0.4], invert="never")
    path = save_checkpoint(tmp_path / "m.safetensors", model, labels, pre)
    bundle = load_checkpoint(path, device="cpu")
    assert bundle.labels == labels and bundle.preprocess == pre and bundle.config == model.config
    assert not bundle.model.training
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(bundle.model(x), model(x))


def test_vit_pytorch_state_dict_loads_with_inferred_config(tmp_path, reference):
    torch.manual_seed(0)
    config = small_config(image_size=32, patch_size=8, channels=3, dim=40, depth=3, heads=5,
                          dim_head=12, mlp_dim=80, use_ds_conv=False, use_glu=False, num_classes=7)
    ref = reference.RvT(**config).eval()
    torch.save(ref.state_dict(), tmp_path / "ref.pt")
    bundle = load_checkpoint(tmp_path / "ref.pt", device="cpu")
    for key, value in config.items():
        assert getattr(bundle.config, key) == value, key
    assert any("use_rotary" in note for note in bundle.notes)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (bundle.model(x) - ref(x)).abs().max() <= 1e-5


def test_wrapped_and_prefixed_state_dicts(tmp_path, reference):
    ref = reference.RvT(**small_config())
    state = {"module." + k: v for k, v in ref.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "wrapped.pth")
    assert load_checkpoint(tmp_path / "wrapped.pth", device="cpu").config.depth == 2


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint. Accepted: the project's .safetensors"):
        load_checkpoint(path)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {Exploit.target}",))


def test_hostile_pickle_is_refused_and_not_run(tmp_path):
    Exploit.target = tmp_path / "pwned"
    torch.save({"weights": Exploit()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refused.*nothing in it was executed"):
        load_checkpoint(tmp_path / "evil.pt")
    assert not Exploit.target.exists()
    # a legacy (non-zip) pickle too
    with open(tmp_path / "evil_legacy.pt", "wb") as f:
        pickle.dump(Exploit(), f, protocol=2)
    with pytest.raises(CheckpointError, match="refused|not a readable"):
        load_checkpoint(tmp_path / "evil_legacy.pt")
    assert not Exploit.target.exists()


def test_whole_module_pickle_is_refused_in_plain_words(tmp_path):
    torch.save(RvT(**small_config()), tmp_path / "module.pt")
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(tmp_path / "module.pt")
    message = str(refused.value)
    assert "the pickle refers to `rvt.model.RvT`" in message and "torch.save(model.state_dict()" in message
    assert "\x1b" not in message and "\n" not in message and message.endswith(".")  # torch's text had both


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = RvT(**small_config()).state_dict()
    del state["transformer.layers.1.0.to_kv.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "keys.pt")
    expected = r"missing \['transformer.layers.1.0.to_kv.weight'\], unexpected \['extra.weight'\]"
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(tmp_path / "keys.pt")


def test_shape_mismatch_names_key_and_shapes(tmp_path):
    model = RvT(**small_config())
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["transformer.layers.1.0.to_out.0.weight"] = torch.zeros(32, 16)
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={
        "format": "rvt-lens/1", "config": model.config.__class__(**small_config()).__dict__.__repr__()})
    # the metadata above is not JSON: a damaged-metadata message
    with pytest.raises(CheckpointError, match="metadata is damaged"):
        load_checkpoint(tmp_path / "bad.safetensors")
    save_checkpoint(tmp_path / "good.safetensors", model, [str(i) for i in range(10)], Preprocess())
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"shape mismatch for transformer.layers.1.0.to_out.0.weight: "
                                              r"checkpoint has \(32, 16\), the model expects \(32, 32\)"):
        load_checkpoint(tmp_path / "bad.pt")


def test_truncated_files(tmp_path):
    model = RvT(**small_config())
    good = save_checkpoint(tmp_path / "good.safetensors", model, [str(i) for i in range(10)], Preprocess())
    (tmp_path / "cut.safetensors").write_bytes(good.read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="runs past the end of the file"):
        load_checkpoint(tmp_path / "cut.safetensors")
    torch.save(model.state_dict(), tmp_path / "good.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "good.pt").read_bytes()[:5000])
    with pytest.raises(CheckpointError, match="damaged or truncated zip archive"):
        load_checkpoint(tmp_path / "cut.pt")


def test_what_shapes_cannot_tell_must_be_given(tmp_path, reference):
    # dim_head 4 gives a single rotary band, whose frequency no longer encodes image_size
    ref = reference.RvT(**small_config(dim_head=4, heads=2))
    torch.save(ref.state_dict(), tmp_path / "one_band.pt")
    with pytest.raises(CheckpointError, match="Accepted: the image_size hint"):
        load_checkpoint(tmp_path / "one_band.pt")
    assert load_checkpoint(tmp_path / "one_band.pt", image_size=28).config.patch_size == 4
    # 4 channels (RGBA) of 4x4 patches: 64 inputs also read as 1 channel of 8x8
    ref = reference.RvT(**small_config(patch_size=4, image_size=32, channels=4))
    torch.save(ref.state_dict(), tmp_path / "rgba.pt")
    assert load_checkpoint(tmp_path / "rgba.pt").config.patch_size == 8  # shapes alone mislead here
    assert load_checkpoint(tmp_path / "rgba.pt", patch_size=4).config.channels == 4
    ref = reference.RvT(**small_config(patch_size=2, image_size=32, channels=5))
    torch.save(ref.state_dict(), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="Accepted: the patch_size and channels hints"):
        load_checkpoint(tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="disagrees with the checkpoint's rotary frequencies"):
        load_checkpoint(tmp_path / "rgba.pt", image_size=64, patch_size=4)


def test_device_choice_is_validated(tmp_path):
    path = save_checkpoint(tmp_path / "m.safetensors", RvT(**small_config()), [str(i) for i in range(10)], Preprocess())
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        load_checkpoint(path, device="tpu")
    assert load_checkpoint(path).device.type in ("cpu", "cuda", "mps")


def test_default_limits_admit_the_bundled_model_and_a_vit_s_sized_rvt():
    limits = ModelLimits()
    limits.check(RvTConfig())  # the bundled model's config
    vit_s = RvTConfig(image_size=224, patch_size=16, num_classes=1000, dim=384, depth=12, heads=6, dim_head=64,
                      mlp_dim=1536, channels=3)
    limits.check(vit_s)
    assert 25e6 < sum(math.prod(s) for s in expected_shapes(vit_s).values()) < limits.max_parameters
    vit_b = RvTConfig(**{**vit_s.to_dict(), "dim": 768, "heads": 12, "mlp_dim": 3072})
    with pytest.raises(CheckpointError, match=r"parameters, above this server's limit of 64,000,000 "
                                              r"\(ModelLimits.max_parameters\)"):
        limits.check(vit_b)
    with pytest.raises(CheckpointError, match=r"14x14 = 196 patches .* limit of 100 \(ModelLimits.max_patches\)"):
        ModelLimits(max_patches=100).check(vit_s)


def test_expected_shapes_allocate_nothing_and_match_a_real_model():
    config = RvTConfig(**small_config(heads=3))
    assert expected_shapes(config) == {k: tuple(v.shape) for k, v in RvT(config).state_dict().items()}
    huge = RvTConfig(dim=8192, depth=64, heads=64, dim_head=128, mlp_dim=32768)  # ~100 GB if it were real
    assert sum(math.prod(s) for s in expected_shapes(huge).values()) > 2.5e10


def test_server_limits_bind_what_a_checkpoint_declares(tmp_path):
    model = RvT(**small_config())
    path = save_checkpoint(tmp_path / "m.safetensors", model, [str(i) for i in range(10)],
                           Preprocess(image_size=(56, 56)))
    assert load_checkpoint(path, "cpu").preprocess.image_size == (56, 56)
    with pytest.raises(CheckpointError, match=r"56x56 px inputs, above .* Accepted: sides of 1 to 32 px"):
        load_checkpoint(path, "cpu", limits=ModelLimits(max_image_size=32))
    with pytest.raises(CheckpointError, match=r"depth is 2, above this server's limit of 1 \(ModelLimits.max_depth\)"):
        load_checkpoint(path, "cpu", limits=ModelLimits(max_depth=1))
    torch.save(model.state_dict(), tmp_path / "m.pt")  # an inferred config is held to the same limits
    with pytest.raises(CheckpointError, match=r"dim is 32, above this server's limit of 16"):
        load_checkpoint(tmp_path / "m.pt", "cpu", limits=ModelLimits(max_dim=16))


def test_preprocessing_must_fit_the_model(tmp_path):
    model = RvT(**small_config())
    for pre, problem in [(Preprocess(image_size=(30, 28)), "not multiples of the patch size 4"),
                         (Preprocess(channels=3, mean=[0.5] * 3, std=[0.5] * 3), "gives 3 channels, the model takes 1"),
                         (Preprocess(std=[0.0]), "do not normalise 1 channel")]:
        path = save_checkpoint(tmp_path / "m.safetensors", model, [str(i) for i in range(10)], pre)
        with pytest.raises(CheckpointError, match=problem):
            load_checkpoint(path, "cpu")


def test_loaded_weights_are_the_files_own_fp32_tensors(tmp_path):
    """Built on the meta device and assigned: no second copy, no parameter left on meta."""
    path = save_checkpoint(tmp_path / "m.safetensors", RvT(**small_config()), [str(i) for i in range(10)],
                           Preprocess())
    model = load_checkpoint(path, "cpu").model
    tensors = [*model.parameters(), *model.buffers()]
    assert all(t.device.type == "cpu" and t.dtype == torch.float32 and not t.requires_grad for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)


def test_vit_pytorch_state_dict_as_safetensors_is_inferred_from_its_header(tmp_path, reference):
    """No project metadata: the config comes from the header's shapes and the one rotary tensor."""
    torch.manual_seed(0)
    ref = reference.RvT(**small_config(heads=3)).eval()
    state = {k: v.contiguous() for k, v in ref.state_dict().items()}
    save_file(state, str(tmp_path / "ref.safetensors"))
    bundle = load_checkpoint(tmp_path / "ref.safetensors", "cpu")
    assert bundle.config == RvTConfig(**small_config(heads=3))
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert (bundle.model(x) - ref(x)).abs().max() <= 1e-5
    state["transformer.pos_emb.scales"] = torch.linspace(1, 14, 100)  # 100 bands: dim_head 400
    save_file(state, str(tmp_path / "bands.safetensors"))
    with pytest.raises(CheckpointError, match=r"100 rotary bands, .* Accepted: up to 32 bands"):
        load_checkpoint(tmp_path / "bands.safetensors", "cpu")

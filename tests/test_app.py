import io
import time
import zipfile

import numpy as np
import pytest
import torch
from app_server import serve
from conftest import small_config
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

import app
from rvt import Preprocess, RvT, save_checkpoint


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    garment = np.full((90, 70, 3), 235, np.uint8)
    garment[15:80, 12:58] = rng.integers(20, 140, (65, 46, 3))
    Image.fromarray(garment).save(root / "garment.png")
    (root / "notes.txt").write_text("not an image")
    (root / "text.pt").write_text("not a checkpoint either")
    (root / "truncated.png").write_bytes((root / "garment.png").read_bytes()[:300])
    Image.new("1", (9000, 9000)).save(root / "huge.png")  # 81 megapixels in a few kB
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # past Pillow's own bomb limit
    frames = [Image.new("L", (32, 32), v) for v in (0, 128, 255)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), "white").save(root / "pixel.png")
    Image.fromarray(garment).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(garment[..., 0].astype(np.uint16) * 250).save(root / "sixteen.png")
    (root / "broken.pt").write_bytes(b"PK\x03\x04garbage")

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(root / 'pwned')!r}, 'w').write('pwned')",))
    torch.save({"w": Exploit()}, root / "hostile.pt")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_checkpoint(path, RvT(**small_config(depth=3, heads=2)), [f"class {i}" for i in range(10)], Preprocess())
    with serve(path) as (url, bundle):
        yield url, bundle


@pytest.fixture
def client(server):
    return Client(server[0], verbose=False)


def predict(client, path, h=28, w=28):
    return client.predict(handle_file(str(path)), h, w, api_name="/predict")


def test_every_event_has_an_api_name(server):
    demo = app.build_app(server[1])
    assert all(dep.api_name for dep in demo.fns.values())


def test_predict_returns_top5_label(client, images):
    result = predict(client, images / "garment.png")
    assert len(result["confidences"]) == 5
    assert sum(c["confidence"] for c in result["confidences"]) <= 1.0 + 1e-6
    assert result["label"] == result["confidences"][0]["label"]


def test_panels_rerender_from_the_cache_without_a_model_pass(client, server, images):
    calls = []
    handle = server[1].model.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        predict(client, images / "garment.png")
        assert len(calls) == 1
        first = client.predict(2, 0, True, api_name="/layer")
        other = client.predict(0, 1, False, api_name="/layer")
        head = client.predict(1, 1, api_name="/head")
        rollout = client.predict("max", 0.3, None, api_name="/rollout_discard")
        stats = client.predict(api_name="/stats")
        rotary = client.predict(1, 1, api_name="/rotary")
        assert len(calls) == 1, "switching layer/head/rollout/tabs must not run the model"
        assert all(Image.open(p).width > 50 for p in (*first, *other, head, rollout[0], stats, *rotary))
        assert Image.open(first[0]).tobytes() != Image.open(other[0]).tobytes()
        plain, grad = client.predict("mean", 0.0, 3, api_name="/rollout_class")
        assert len(calls) == 2  # gradient rollout needs one backward pass for the class...
        client.predict("max", 0.0, 3, api_name="/rollout_class")
        assert len(calls) == 2  # ...and is cached per class afterwards
        assert grad is not None
    finally:
        handle.remove()


def test_resolution_change_runs_non_square(client, images):
    result = client.predict(handle_file(str(images / "garment.png")), 20, 44, api_name="/resize_w")
    assert len(result["confidences"]) == 5
    heads, head, model = client.predict(2, 0, True, api_name="/layer")
    assert Image.open(head).size[0] > Image.open(head).size[1]  # a 5x11 grid is wider than tall


def test_attribution_whatif_and_export(client, images):
    predict(client, images / "garment.png")
    attr = client.predict("Integrated Gradients", 8, False, None, api_name="/attribution")
    assert Image.open(attr).width > 200
    after, table, before_img, after_img = client.predict(["L2H0", "L2H1"], ["layer 0"], 2, api_name="/whatif")
    assert "| class | before | after | change |" in table and len(after["confidences"]) == 5
    assert Image.open(before_img).tobytes() != Image.open(after_img).tobytes()
    archive = client.predict(api_name="/export")
    names = zipfile.ZipFile(archive).namelist()
    assert "summary.json" in names and "tensors.npz" in names and "rotary_nyquist.png" in names
    with zipfile.ZipFile(archive) as z:
        tensors = np.load(io.BytesIO(z.read("tensors.npz")))
        assert tensors["attention"].shape == (3, 1, 2, 50, 50)


@pytest.mark.parametrize("name,message", [
    ("notes.txt", "Could not read the upload as an image"),
    ("truncated.png", "damaged or truncated|Could not read the upload"),
    ("huge.png", "too large to decode safely"),
    ("bomb.png", "decompression bomb|too large|Could not read"),
    ("animated.gif", "animation with 3 frames"),
    ("pixel.png", "only 1x1 pixels"),
])
def test_bad_images_are_explained_and_the_server_keeps_serving(client, images, name, message):
    with pytest.raises(AppError, match=message):
        predict(client, images / name)
    assert len(predict(client, images / "garment.png")["confidences"]) == 5


@pytest.mark.parametrize("name", ["cmyk.jpg", "sixteen.png"])
def test_unusual_but_valid_images_work(client, images, name):
    assert len(predict(client, images / name)["confidences"]) == 5


def load_args(source, file=None):
    return (source, handle_file(str(file)) if file else None, None, None, None, True, 64, 2, 2, 16, 28, 4)


@pytest.mark.parametrize("name,message", [("broken.pt", "not a readable torch checkpoint"),
                                          ("hostile.pt", "refused.*nothing in it was executed"),
                                          ("text.pt", "not a checkpoint. Accepted"),
                                          ("notes.txt", "Invalid file type")])
def test_bad_checkpoints_are_explained(client, images, name, message):
    with pytest.raises(AppError, match=message):
        client.predict(*load_args(app.UPLOADED, images / name), api_name="/load_model")
    assert not (images / "pwned").exists()
    assert len(predict(client, images / "garment.png")["confidences"]) == 5


def test_user_checkpoint_and_random_model(client, images, tmp_path, reference):
    ref = reference.RvT(**small_config(depth=1, heads=3, dim=24))
    torch.save(ref.state_dict(), tmp_path / "mine.pt")
    out = client.predict(*load_args(app.UPLOADED, tmp_path / "mine.pt"), api_name="/load_model")
    assert "1 layers x 3 heads" in out[0]
    predict(client, images / "garment.png")
    heads = client.predict(0, 2, True, api_name="/layer")[0]
    assert Image.open(heads).width > 300  # three heads side by side
    out = client.predict(*load_args(app.RANDOM), api_name="/load_model")
    assert "2 layers x 2 heads" in out[0] and "untrained" in out[0]
    assert len(predict(client, images / "garment.png")["confidences"]) == 5


def test_rendering_before_any_image_asks_for_one(server):
    fresh = Client(server[0], verbose=False)
    with pytest.raises(AppError, match="Upload an image"):
        fresh.predict(api_name="/stats")


def test_oom_is_reported_not_fatal(monkeypatch):
    def boom(*args):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(app.gr.Error, match="ran out of memory"):
        app.user_errors(boom)()


def test_concurrent_users_do_not_see_each_others_interventions(server, images):
    """One user silencing every head must not change another user's prediction on the shared model."""
    import concurrent.futures

    observer, meddler = Client(server[0], verbose=False), Client(server[0], verbose=False)
    expected = predict(observer, images / "garment.png")
    predict(meddler, images / "garment.png")
    everything = [f"L{layer}H{h}" for layer in range(3) for h in range(2)]

    def meddle():
        for _ in range(6):
            meddler.predict(everything, ["layer 0", "layer 1", "layer 2"], 0, api_name="/whatif")

    def observe():
        return [predict(observer, images / "garment.png") for _ in range(6)]

    # Slow every forward down so that, unless passes take turns, the two users' passes overlap.
    slow = server[1].model.register_forward_pre_hook(lambda *a: time.sleep(0.05))
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            meddling = pool.submit(meddle)
            seen = pool.submit(observe).result()
            meddling.result()
    finally:
        slow.remove()
    assert all(r["confidences"] == expected["confidences"] for r in seen)

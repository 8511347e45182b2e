"""The explorer through gradio_client and plain HTTP: what a visitor and an API user get."""
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
import zipfile

import gradio as gr
import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from app_server import free_port, serve
from conftest import small_config
from lens import texts
from lens.service import LensService, ServerLimits
from lens.tabs.inputs import notice
from lens.tabs.model import BUNDLED, RANDOM, UPLOADED
from lens.ui import build_app, launch, prune_cache
from rvt import Preprocess, RvT, load_checkpoint, save_checkpoint
from rvt.assets import BUNDLED_CHECKPOINT, EXAMPLES
from rvt.faithfulness import clear_caches
from rvt.photolike import non_garment_set
from rvt.preprocess import read_image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    garment = np.full((90, 70, 3), 235, np.uint8)
    garment[15:80, 12:58] = rng.integers(20, 140, (65, 46, 3))
    Image.fromarray(garment).save(root / "garment.png")
    other = np.zeros((56, 56), np.uint8)
    other[4:52, 18:38] = 200  # a bright upright bar on black: another prediction
    Image.fromarray(other).save(root / "other.png")
    (root / "notes.txt").write_text("not an image")
    (root / "text.pt").write_text("not a checkpoint either")
    (root / "truncated.png").write_bytes((root / "garment.png").read_bytes()[:300])
    Image.new("1", (9000, 9000)).save(root / "huge.png")  # 81 megapixels in a few kB
    Image.new("1", (20000, 20000)).save(root / "bomb.png")  # past Pillow's own bomb limit
    frames = [Image.new("L", (32, 32), v) for v in (0, 128, 255)]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:])
    Image.new("RGB", (1, 1), "white").save(root / "pixel.png")
    (root / "broken.pt").write_bytes(b"PK\x03\x04garbage")

    class Exploit:
        def __reduce__(self):
            return (exec, (f"open({str(root / 'pwned')!r}, 'w').write('pwned')",))
    torch.save({"w": Exploit()}, root / "hostile.pt")
    torch.save(RvT(**small_config(depth=1)), root / "module.pt")  # a whole pickled nn.Module
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Files whose decoding the app used to get wrong: every one must reach the model as the API sees it."""
    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(1)
    item = np.zeros((60, 40), np.uint8)
    item[8:52, 6:34] = rng.integers(10, 60, (44, 28))  # a dark garment...
    alpha = np.zeros_like(item)
    alpha[8:52, 6:34] = 255  # ...on a transparent background
    Image.fromarray(np.dstack([item] * 3 + [alpha]), "RGBA").save(root / "rgba_dark.png")
    palette = Image.fromarray(np.dstack([item] * 3 + [alpha]), "RGBA").convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = palette.getpixel((0, 0))
    palette.save(root / "palette_transparent.png", transparency=palette.getpixel((0, 0)))
    sixteen = np.full((64, 48), 600, np.uint16)
    sixteen[10:54, 8:40] = rng.integers(1500, 3000, (44, 32))
    Image.fromarray(sixteen).save(root / "sixteen.png")
    light = np.full((64, 48, 3), 230, np.uint8)
    light[10:54, 10:38] = rng.integers(20, 120, (44, 28, 3))
    Image.fromarray(light).convert("CMYK").save(root / "cmyk.jpg")
    rotated = Image.fromarray(light)
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    rotated.save(root / "exif_rotated.jpg", exif=exif)
    Image.fromarray(light[..., 0]).save(root / "grayscale.png")
    Image.fromarray(light[::6, ::6]).save(root / "tiny.png")  # 11x8
    Image.fromarray(np.kron(light, np.ones((40, 40, 1), np.uint8))).save(root / "huge.jpg")  # 2560x1920
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_checkpoint(path, RvT(**small_config(depth=3, heads=2)), [f"class {i}" for i in range(10)], Preprocess())
    with serve(path) as (url, service):
        yield url, service


@pytest.fixture(scope="module")
def bundled_server():
    with serve(BUNDLED_CHECKPOINT) as (url, service):
        yield url, service


@pytest.fixture
def client(server):
    return Client(server[0], verbose=False)


def predict(client, path, h=28, w=28):
    return client.predict(handle_file(str(path)), h, w, api_name="/predict")


def load_args(source, file=None, use_rotary=True):
    return (source, handle_file(str(file)) if file else None, None, None, None, use_rotary, 64, 2, 2, 16, 28, 4)


def test_every_event_has_an_api_name(server):
    demo = build_app(server[1])
    named = [dep for dep in demo.fns.values() if dep.api_visibility != "private"]  # private: Gradio's own cancels
    assert named and all(dep.api_name and not dep.api_name.startswith("unnamed") for dep in named)


def test_predict_returns_top5_label(client, images):
    result = predict(client, images / "garment.png")
    assert len(result["confidences"]) == 5
    assert sum(c["confidence"] for c in result["confidences"]) <= 1.0 + 1e-6
    assert result["label"] == result["confidences"][0]["label"]


def test_app_api_and_cli_agree_on_every_kind_of_file(bundled_server, corpus, tmp_path):
    """One input path: the app's prediction equals load_checkpoint + bundle.preprocess + the model and
    `python -m viz` for files that Gradio's own decoding used to change (alpha, 16-bit, CMYK, EXIF, ...)."""
    client = Client(bundled_server[0], verbose=False)
    bundle = load_checkpoint(BUNDLED_CHECKPOINT, "cpu")
    for path in sorted(corpus.iterdir()):
        with torch.no_grad():
            probs = bundle.model(bundle.preprocess(read_image(path))[None]).softmax(-1)[0]
        expected = bundle.labels[int(probs.argmax())]
        result = predict(client, path)
        assert result["label"] == expected, path.name
        assert result["confidences"][0]["confidence"] == pytest.approx(float(probs.max()), abs=1e-5), path.name
        if path.name in ("rgba_dark.png", "sixteen.png"):  # the CLI too, on the two the issue measured
            out = tmp_path / path.stem
            subprocess.run([sys.executable, "-m", "viz", str(path), "--out", str(out), "--no-attributions"],
                           check=True, capture_output=True)
            summary = json.loads((out / "summary.json").read_text())
            assert summary["prediction"][0]["label"] == expected, path.name


def test_panels_rerender_from_the_cache_without_a_model_pass(client, server, images):
    service = server[1]
    predict(client, images / "garment.png")
    passes = service.passes
    first = client.predict(2, 0, True, api_name="/layer")
    other = client.predict(0, 1, False, api_name="/layer")
    head = client.predict(1, 1, True, api_name="/head")
    rollout = client.predict("max", 0.3, None, api_name="/rollout_discard")
    stats = client.predict(api_name="/stats")
    rotary = client.predict(1, 1, api_name="/rotary")
    assert service.passes == passes, "switching layer/head/rollout/tabs must not run the model"
    images_out = [*first[:3], *other[:3], head, rollout[0], stats, *rotary[1:]]
    assert all(Image.open(p).width > 50 for p in images_out)
    assert Image.open(first[0]).tobytes() != Image.open(other[0]).tobytes()
    plain, grad = client.predict("mean", 0.0, 3, api_name="/rollout_class")
    assert service.passes == passes + 1  # gradient rollout needs one backward pass for the class...
    _, grad_max = client.predict("max", 0.0, 3, api_name="/rollout_class")
    assert service.passes == passes + 1  # ...and is cached per class afterwards
    assert Image.open(grad).tobytes() != Image.open(grad_max).tobytes()  # head fusion applies to it too


def test_resolution_change_runs_non_square(client, images):
    result = client.predict(handle_file(str(images / "garment.png")), 20, 44, api_name="/resize_w")
    assert len(result["confidences"]) == 5
    heads, head, model, _ = client.predict(2, 0, True, api_name="/layer")
    assert Image.open(head).size[0] > Image.open(head).size[1]  # a 5x11 grid is wider than tall


def test_sizes_above_the_server_limit_are_refused(client, server, images):
    service = server[1]
    largest = service.size_range(service.bundled.bundle)[1]  # the memory budget's largest square side
    assert 28 < largest <= service.limits.max_side
    with pytest.raises(AppError, match=f"greater than maximum value {largest}"):  # checked on the server
        predict(client, images / "garment.png", 1792, 1792)  # (the budget's own check: test_service)
    assert len(predict(client, images / "garment.png")["confidences"]) == 5


def test_attribution_whatif_and_export(client, images):
    predict(client, images / "garment.png")
    attr = client.predict("Integrated Gradients", 8, "black", False, None, api_name="/attribution")
    assert Image.open(attr).width > 200
    after, table, before_img, after_img = client.predict([4, 5], [0], 2, api_name="/whatif")  # layer 2's heads
    assert "| class | before | after | change |" in table and len(after["confidences"]) == 5
    assert Image.open(before_img).tobytes() != Image.open(after_img).tobytes()
    unchanged = client.predict([], [], 2, api_name="/whatif")  # nothing chosen: a warning, not an error
    assert all(value == {"__type__": "update"} for value in unchanged)  # no output changes
    archive = client.predict(api_name="/export")
    names = zipfile.ZipFile(archive).namelist()
    assert {"summary.json", "tensors.npz", "rotary_steps.png", "print/head_stats.svg"} <= set(names)
    with zipfile.ZipFile(archive) as z:
        tensors = np.load(io.BytesIO(z.read("tensors.npz")))
        assert tensors["attention"].shape == (3, 1, 2, 50, 50)


def panels(client):
    """Every panel as the page redraws it after an analysis, by output label."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/predict_panels"]
    values = client.predict(2, 0, True, "mean", 0.0, None, api_name="/predict_panels")
    return dict(zip([r["label"] for r in api["returns"]], values, strict=True))


def test_a_new_image_clears_old_results_and_a_refused_one_clears_everything(client, images):
    predict(client, images / "garment.png")
    assert client.predict("Saliency", 4, "black", False, None, api_name="/attribution") is not None
    predict(client, images / "other.png")
    shown = panels(client)
    assert shown["attribution"] is None and not shown["prediction after"]  # old results are gone
    assert shown["all heads of the layer"] is not None  # the new image's panels are drawn
    assert shown["head statistics"] is None  # lazy tab, not visible: drawn when opened...
    assert client.predict(api_name="/stats")[1] is not None
    assert panels(client)["head statistics"] is not None  # ...and redrawn while it is the visible one
    with pytest.raises(AppError, match="not an image"):
        predict(client, images / "notes.txt")
    texts_shown = {"query", "rotary", "what-if table"}
    assert not any(v for k, v in panels(client).items() if k not in texts_shown)  # nothing of the old image
    for api_name, args in (("/layer", (0, 0, True)), ("/export", ())):
        with pytest.raises(AppError, match="Upload an image"):
            client.predict(*args, api_name=api_name)


def test_faithfulness_scorecard_through_the_api_and_cleared_by_a_new_image(client, server, images):
    predict(client, images / "garment.png")
    clear_caches()  # the export of an earlier test scored this image already
    passes = server[1].passes
    note, table, curves, randomised = client.predict("black", None, api_name="/faithfulness")
    assert "Scored for" in note and "Failing the randomisation check" in note and "CPU time" in note
    assert all(Image.open(p).width > 500 for p in (table, curves, randomised))
    assert "from the cache" in client.predict("black", None, api_name="/faithfulness")[0]
    assert server[1].passes == passes + 2  # one borrowed replica per request, the second served from the cache
    with pytest.raises(AppError, match="purple"):
        client.predict("purple", None, api_name="/faithfulness")
    client.predict(api_name="/cancel_faithfulness")  # nothing running: a hint, no error
    predict(client, images / "other.png")
    shown = panels(client)
    assert shown["scorecard"] is None and not shown["scorecard note"]  # the old image's scorecard is gone


def running_jobs(service) -> int:
    with service._lock:
        return sum(data.job is not None for data in service._sessions.values())


def test_gradio_cancel_stops_the_computation_not_just_the_event(client, server, images):
    """Job.cancel() (Gradio's /cancel, what a closed page and the Cancel button's `cancels=` send too) ends
    the event; the job's thread must stop as well, or the visitor's session stays busy until the time limit."""
    service = server[1]
    predict(client, images / "garment.png", 112, 112)
    job = client.submit("Integrated Gradients", 128, "black", True, None, api_name="/attribution")
    deadline = time.monotonic() + 30
    while running_jobs(service) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running_jobs(service) == 1, "the attribution never started"
    job.cancel()
    deadline = time.monotonic() + 8  # uncancelled, the job runs over 30 s: 128 IG steps x 8 SmoothGrad samples
    while running_jobs(service) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running_jobs(service) == 0, "the computation kept running after its event was cancelled"
    assert Image.open(client.predict("Saliency", 4, "black", False, None, api_name="/attribution")).width > 100
    predict(client, images / "garment.png")


def test_a_visitor_who_disconnects_stops_their_job(server, images):
    """A /call/ client (or a closed tab) that drops its result stream sends no cancel: the job must
    still stop within a second or two, not run on to the time limit holding a model replica."""
    url, service = server
    http, session = httpx.Client(timeout=60), uuid.uuid4().hex

    def submit(api: str, *data) -> str:
        reply = http.post(f"{url}gradio_api/call/{api}", json={"data": list(data), "session_hash": session})
        reply.raise_for_status()
        return reply.json()["event_id"]

    upload = http.post(f"{url}gradio_api/upload", files={"files": (images / "garment.png").open("rb")}).json()[0]
    event = submit("predict", {"path": upload, "meta": {"_type": "gradio.FileData"}}, 112, 112)
    assert "event: complete" in http.get(f"{url}gradio_api/call/predict/{event}").text
    event = submit("attribution", "Integrated Gradients", 128, "black", True, None)
    with http.stream("GET", f"{url}gradio_api/call/attribution/{event}"):
        deadline = time.monotonic() + 30
        while running_jobs(service) == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert running_jobs(service) == 1, "the attribution never started"
    http.close()  # the stream is gone: no cancel was sent
    gone = time.monotonic()
    while running_jobs(service) and time.monotonic() < gone + 8:  # alone, the job runs over 30 s
        time.sleep(0.02)
    assert running_jobs(service) == 0, "the job kept running after its visitor disconnected"
    assert time.monotonic() - gone < 2.5


def test_the_novelty_notice_is_the_python_apis(bundled_server, tmp_path):
    """The notice beside the prediction is `bundle.novelty` of the same file, flagged or not."""
    client = Client(bundled_server[0], verbose=False)
    bundle = load_checkpoint(BUNDLED_CHECKPOINT, "cpu")
    strangers = []
    for i, image in enumerate(non_garment_set(6, seed=5)):
        image.save(tmp_path / f"stranger{i}.png")
        strangers.append(tmp_path / f"stranger{i}.png")
    flags = []
    for path in [*sorted(EXAMPLES.glob("*.png"))[:3], *strangers]:
        expected = bundle.novelty(read_image(path))
        predict(client, path)
        values = client.predict(5, 0, True, "mean", 0.0, None, api_name="/predict_panels")
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/predict_panels"]
        shown = dict(zip([r["label"] for r in api["returns"]], values, strict=True))["novelty notice"]
        assert shown == notice(expected), path.name
        flags.append(expected.flag)
    assert flags[:3] == [False] * 3 and any(flags[3:])  # the examples pass, some non-garments are flagged
    assert "Unlike the training data" in notice(bundle.novelty(read_image(strangers[flags[3:].index(True)])))


@pytest.mark.parametrize("name,message", [
    ("notes.txt", "not an image"),
    ("truncated.png", "damaged or truncated|not an image"),
    ("huge.png", "too large to decode safely"),
    ("bomb.png", "decompression bomb|too large"),
    ("animated.gif", "animation with 3 frames"),
    ("pixel.png", "only 1x1 pixels"),
])
def test_bad_images_are_explained_and_the_server_keeps_serving(client, images, name, message):
    with pytest.raises(AppError, match=message):
        predict(client, images / name)
    assert len(predict(client, images / "garment.png")["confidences"]) == 5


@pytest.mark.parametrize("name,message", [("broken.pt", "not a readable torch checkpoint"),
                                          ("hostile.pt", "refused.*nothing in it was executed"),
                                          ("text.pt", "not a checkpoint. Accepted"),
                                          ("notes.txt", "Invalid file type")])
def test_bad_checkpoints_are_explained(client, images, name, message):
    with pytest.raises(AppError, match=message):
        client.predict(*load_args(UPLOADED, images / name), api_name="/load_model")
    assert not (images / "pwned").exists()
    assert len(predict(client, images / "garment.png")["confidences"]) == 5


def test_a_pickled_module_is_refused_in_plain_words(client, images):
    with pytest.raises(AppError) as refused:
        client.predict(*load_args(UPLOADED, images / "module.pt"), api_name="/load_model")
    message = str(refused.value)
    assert "\x1b[" not in message and "state_dict" in message
    assert re.search(r"[.)]\s*$", message), f"message stops mid-sentence: {message!r}"


def test_loading_a_model_without_an_image_is_quiet(server):
    fresh = Client(server[0], verbose=False)
    fresh.predict(*load_args(BUNDLED), api_name="/load_model")
    assert not fresh.predict(None, 28, 28, api_name="/load_model_predict")  # a hint, not an error


def test_user_checkpoint_and_random_model(client, images, tmp_path, reference):
    ref = reference.RvT(**small_config(depth=1, heads=3, dim=24))
    torch.save(ref.state_dict(), tmp_path / "mine.pt")
    out = client.predict(*load_args(UPLOADED, tmp_path / "mine.pt"), api_name="/load_model")
    assert "1 layers x 3 heads" in out[0]
    predict(client, images / "garment.png")
    heads = client.predict(0, 2, True, api_name="/layer")[0]
    assert Image.open(heads).width > 300  # three heads side by side
    out = client.predict(*load_args(RANDOM), api_name="/load_model")
    assert "2 layers x 2 heads" in out[0] and "untrained" in out[0]
    assert len(predict(client, images / "garment.png")["confidences"]) == 5
    client.predict(*load_args(BUNDLED), api_name="/load_model")


def test_a_model_without_rotary_gets_a_plain_message(client, images, tmp_path, reference):
    ref = reference.RvT(**small_config(depth=1, use_rotary=False))
    torch.save(ref.state_dict(), tmp_path / "plain.pt")
    client.predict(*load_args(UPLOADED, tmp_path / "plain.pt", use_rotary=False), api_name="/load_model")
    predict(client, images / "garment.png")
    about, kernel, steps, phase = client.predict(0, 0, api_name="/rotary")
    assert about == texts.NO_ROTARY and kernel is None and steps is None and phase is None
    client.predict(*load_args(BUNDLED), api_name="/load_model")


def test_rendering_before_any_image_asks_for_one(server):
    fresh = Client(server[0], verbose=False)
    with pytest.raises(AppError, match="Upload an image"):
        fresh.predict(2, 0, True, api_name="/layer")


def test_click_data_is_validated_on_the_server(server, images):
    """A select event with forged coordinates is refused and the session keeps working."""
    url = server[0]
    client = Client(url, verbose=False)
    predict(client, images / "garment.png")
    session = client.session_hash
    body = {"data": [5, 0, True], "event_data": {"index": [-100000, -5], "value": None},
            "session_hash": session, "fn_index": None}
    answer = httpx.post(f"{url}gradio_api/call/pick_query", json=body, timeout=10)
    assert answer.is_success
    stream = httpx.get(f"{url}gradio_api/call/pick_query/{answer.json()['event_id']}", timeout=30).text
    assert "event: error" in stream
    assert len(client.predict(2, 0, True, api_name="/layer")) == 4


def test_gradio_forgets_visitors_once_they_are_gone(images):
    """Gradio's per-visitor record (a copy of the page's config, about 0.5 MB here) is freed once the
    visitor's service session has expired, for API clients too, which never close a page."""
    service = LensService(load_checkpoint(BUNDLED_CHECKPOINT, "cpu"), ServerLimits(session_ttl=1.0))
    demo, port = build_app(service), free_port()
    try:
        launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        clients = [Client(f"http://127.0.0.1:{port}/", verbose=False) for _ in range(3)]
        for client in clients:
            predict(client, images / "garment.png")
        hashes = {client.session_hash for client in clients}
        assert hashes <= set(demo.state_holder.session_data)
        deadline = time.monotonic() + 10  # TTL 1 s, the janitor looks every second
        while hashes & set(demo.state_holder.session_data) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not hashes & set(demo.state_holder.session_data), "Gradio still holds the gone visitors' state"
        assert service.live_sessions == 0
        predict(clients[0], images / "garment.png")  # a visitor who comes back gets a fresh session
    finally:
        demo.close()
        service.close()


def test_cache_pruning_keeps_examples_and_new_uploads_while_uploads_arrive(images, tmp_path):
    """Old files go with their folders while another thread adds uploads, which Gradio's own
    delete_cache task does not survive ("Set changed size during iteration"); new files and a
    component's example stay."""
    with gr.Blocks() as demo:
        example = gr.Image(value=str(images / "garment.png"))
    kept = next(iter(example.keep_in_cache))
    files, old = demo.temp_file_sets[0], []
    for i in range(3000):
        (tmp_path / f"old{i}").mkdir()
        old.append(tmp_path / f"old{i}" / "upload.png")
        old[-1].write_bytes(b"x")
        files.add(str(old[-1]))
    time.sleep(0.05)
    new, stop = [], threading.Event()

    def upload():
        while not stop.is_set() and len(new) < 20000:
            new.append(tmp_path / f"new{len(new)}.png")
            new[-1].write_bytes(b"y")
            files.add(str(new[-1]))

    uploader = threading.Thread(target=upload)
    uploader.start()
    try:
        removed = prune_cache(demo, age=0.01)
    finally:
        stop.set()
        uploader.join()
    assert removed == 3000 and not any(path.parent.exists() for path in old)
    assert len(new) > 0 and all(path.exists() and str(path) in files for path in new)  # arrived meanwhile
    assert os.path.exists(kept)
    assert prune_cache(demo, age=3600) == 0

"""The Rotary lab tab through gradio_client (and its sweep in-process): the API answer, drawing with and
without an image, the band what-if, the resolution sweep and the lesson."""
import math

import gradio as gr
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from PIL import Image

from app_server import serve
from conftest import small_config
from lens.service import Cancelled, LensService
from lens.tabs import Context
from lens.tabs.rotary_lab import RotaryLabPart
from rvt import Preprocess, RvT, load_checkpoint, save_checkpoint
from rvt.rotary_lab import lab_bands
from viz.rotary_lab import LESSON


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_checkpoint(path, RvT(**small_config(depth=2, heads=2)), [f"class {i}" for i in range(10)], Preprocess())
    return path


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    garment = np.full((56, 56), 10, np.uint8)
    garment[6:50, 14:42] = np.random.default_rng(0).integers(80, 250, (44, 28))
    path = tmp_path_factory.mktemp("images") / "garment.png"
    Image.fromarray(garment).save(path)
    return path


@pytest.fixture(scope="module")
def server(checkpoint):
    with serve(checkpoint) as (url, service):
        yield url, service


def pixels(path) -> bytes:
    return Image.open(path).convert("RGB").tobytes()


def plain(value):
    """A control's value whether the handler sent it as is or as an update (label, interactive, ...)."""
    return value["value"] if isinstance(value, dict) and value.get("__type__") == "update" else value


def test_the_api_takes_exactly_the_five_lab_inputs_and_answers_lab_bands(server):
    client = Client(server[0], verbose=False)
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/rotary_lab"]
    assert [p["parameter_name"] for p in api["parameters"]] == ["schedule", "rows", "cols", "dim_head",
                                                                 "max_freq_or_base"]
    answer = client.predict("rvt", 7, 7, 24, 28, api_name="/rotary_lab")
    assert answer == lab_bands("rvt", 7, 7, 24, 28)
    rows = [b for b in answer["bands"] if b["axis"] == "row"]
    expected = np.linspace(1, 14, 6) * math.pi * 2 / 6  # RvT: scales times pi over a position step of 2/6
    assert [b["step"] for b in rows] == pytest.approx(expected.tolist())
    assert [b["aliases"] for b in rows] == [False] + [True] * 5
    assert client.predict("rope", 3, 5, 16, 100, api_name="/rotary_lab") == lab_bands("rope", 3, 5, 16, 100)


def test_the_lab_draws_and_redraws_with_no_image(server):
    url, service = server
    client = Client(url, verbose=False)
    shown = [c["props"] for c in client.config["components"] if c["props"].get("elem_id") == "lab-phase"]
    assert shown and shown[0]["value"] is not None  # drawn when the page is built: no event, no analysis
    client.predict(0, 0, api_name="/tab_rotary_lab")  # opening the tab without an image is no error
    passes = service.passes
    client.predict("rvt", 7, 7, 24, 28, api_name="/rotary_lab")
    first = client.predict(api_name="/rotary_lab_figures")  # drawn from the view the answer kept
    client.predict("rvt", 14, 7, 24, 28, api_name="/rotary_lab")
    other = client.predict(api_name="/rotary_lab_figures")
    assert all(Image.open(p).width >= 600 for p in first)
    assert all(pixels(a) != pixels(b) for a, b in zip(first, other, strict=True))
    value, dim_head, scaling, answer = client.predict("rope", 7, 7, 24, 28, api_name="/rotary_lab_schedule")
    assert plain(value) == 100 and plain(scaling) == "native" and answer == lab_bands("rope", 7, 7, 24, 100)
    trained = client.predict("rvt", 14, 14, 24, 28, 7, 7, "native", api_name="/rotary_lab_resolution")
    assert trained == lab_bands("rvt", 14, 14, 24, 28, train_rows=7, train_cols=7)
    assert client.predict("rvt", 14, 14, 24, 28, api_name="/rotary_lab")["train_grid"] == [7, 7]  # the tab's own
    assert Client(url, verbose=False).predict("rvt", 14, 14, 24, 28, api_name="/rotary_lab") == \
        lab_bands("rvt", 14, 14, 24, 28)  # a plain API call: the training grid is the grid
    assert service.passes == passes, "the schedule lab never runs the model"


def test_with_an_image_the_head_kernel_usage_and_band_switch_off_appear(server, image):
    url, service = server
    client = Client(url, verbose=False)
    client.predict(handle_file(str(image)), 28, 28, api_name="/predict")
    note, head, usage, ablation, sweep_note, sweep = client.predict(1, 1, api_name="/tab_rotary_lab")
    assert "alias" in note and Image.open(head).width >= 600 and Image.open(usage).width >= 600
    assert ablation is None and sweep is None
    passes = service.passes
    switched = client.predict(["row 3", "col 3"], [0, 1], api_name="/band_switch_off")
    assert service.passes == passes + 1 and Image.open(switched).width >= 600
    assert client.predict(1, 1, api_name="/tab_rotary_lab")[3] is not None  # kept when the tab is reopened


def test_the_sweep_finishes_through_the_app(server, image):
    client = Client(server[0], verbose=False)
    client.predict(handle_file(str(image)), 28, 28, api_name="/predict")
    figure, note = client.predict(api_name="/resolution_sweep")
    assert Image.open(figure).width >= 600 and "Swept grids 4x4, 5x5, 7x7, 10x10, 14x14, 21x21, 28x28" in note
    client.predict(handle_file(str(image)), 20, 28, api_name="/predict")  # a new analysis...
    assert client.predict(1, 1, api_name="/tab_rotary_lab")[5] is None  # ...clears the old sweep


def test_the_sweep_reports_progress_and_stops_on_cancel(checkpoint, image):
    service = LensService(load_checkpoint(checkpoint, "cpu"))
    with gr.Blocks():
        ctx = Context(service=service, session=gr.State(None), visible=gr.State(None),
                      shared={"layer": gr.Slider(0, 1), "head": gr.Slider(0, 1)})
        part = RotaryLabPart(ctx)
    sid = service.open_session()
    service.analyze(sid, image)
    fractions = []
    part.run_sweep(sid, fractions.append)
    assert fractions == sorted(fractions) and len(fractions) == 7 and fractions[-1] == 1.0
    with pytest.raises(Cancelled):
        part.run_sweep(sid, lambda f: service.cancel(sid))
    assert not service.cancel(sid)  # the job ended with the cancel: nothing is left running
    service.close()


def test_a_lesson_step_sets_the_controls_and_the_figures_follow(server):
    client = Client(server[0], verbose=False)
    figures = []
    for step in (0, 4):  # step 0 draws a one-row 1x16 grid
        settings = LESSON[step]["settings"]
        out = client.predict("rvt", 7, 7, 24, 28, step, api_name="/rotary_lab_lesson")
        schedule, rows, cols, dim_head, value, train_rows, train_cols, scaling, answer, look = map(plain, out)
        assert (schedule, rows, cols, dim_head) == tuple(settings[k] for k in ("schedule", "rows", "cols", "dim_head"))
        assert LESSON[step]["look"] in look
        assert answer == lab_bands(schedule, rows, cols, dim_head, value, train_rows=settings.get("train_rows"),
                                   train_cols=settings.get("train_cols"), scaling=settings["scaling"])
        figures.append(client.predict(api_name="/rotary_lab_figures"))
    assert all(pixels(a) != pixels(b) for a, b in zip(*figures, strict=True))
    assert answer["train_grid"] == [7, 7]  # step 5 trains at 7x7 and looks at 14x14

"""The left column: the upload, the examples, the prediction and its novelty notice, what the model sees,
the resolution."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.tabs import Part
from rvt.assets import EXAMPLES as EXAMPLES_DIR
from viz.render import enlarge

EXAMPLES = sorted(EXAMPLES_DIR.glob("*.png"))


def raw_upload_image(**kwargs) -> gr.Image:
    """A gr.Image that hands the uploaded file itself to the app, undecoded and unconverted.

    Gradio's own preprocess opens the file and may convert it (to RGB, dropping alpha and 16-bit
    range); the app must see exactly the file the Python API would, so `read_image` gets the path.
    Pasted and webcam images arrive as data URLs, which Gradio writes to a file first.
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    decode = image.preprocess

    def preprocess(payload):
        if payload is None:
            return None
        if payload.path and not (payload.url or "").startswith("data:"):
            return payload.path
        return decode(payload)

    image.preprocess = preprocess
    return image


class InputPart(Part):
    def __init__(self, ctx):
        super().__init__(ctx)
        bundle = ctx.service.bundled.bundle
        self.image = raw_upload_image(sources=["upload", "clipboard", "webcam"], label="Image",
                                      elem_id="input-img", height=260)
        if EXAMPLES:
            gr.Examples([[str(p)] for p in EXAMPLES], inputs=[self.image], label="Fashion-MNIST test images",
                        examples_per_page=10)
        self.label = gr.Label(num_top_classes=5, label="Prediction", elem_id="prediction")
        self.notice = gr.Markdown(label="novelty notice", elem_id="novelty")
        self.seen = gr.Image(label="what the model sees (after preprocessing)", elem_id="seen-img",
                             interactive=False, format="png", height=160)
        with gr.Accordion("Inference resolution", open=False):
            gr.Markdown(texts.RESOLUTION)
            self.height = gr.Slider(label="height (px)", elem_id="height", **self.size_kwargs(bundle))
            self.width = gr.Slider(label="width (px)", elem_id="width", **self.size_kwargs(bundle, axis=1))
        self.outputs = [self.label, self.notice, self.seen]
        self.model_controls = [self.height, self.width]
        ctx.shared.update(image=self.image, height=self.height, width=self.width)

    def size_kwargs(self, bundle, axis: int = 0) -> dict:
        lo, hi, step = self.ctx.service.size_range(bundle)
        return dict(minimum=lo, maximum=hi, step=step, value=bundle.preprocess.image_size[axis])

    def on_model(self, bundle) -> dict:
        return {self.height: gr.Slider(**self.size_kwargs(bundle)),
                self.width: gr.Slider(**self.size_kwargs(bundle, axis=1))}

    def clear(self) -> dict:
        return {**super().clear(), self.notice: ""}

    def draw(self, sid, values):
        analysis = self.ctx.service.current(sid)
        return {self.label: dict(analysis.top(5)), self.notice: notice(analysis.novelty),
                self.seen: enlarge(analysis.image)}


def notice(found) -> str:
    """The "unlike my training data" notice in plain words, with its score (rvt.novelty)."""
    if found is None:
        return ""
    if found.flag:
        return f"**⚠ Unlike the training data.** {found.reason}"
    if found.flag is None:
        return f"*{found.reason}*"
    return f"**No sign that it is unlike the training data.** {found.reason}"

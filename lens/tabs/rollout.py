"""Rollout tab: attention rollout and gradient rollout for a class, overlaid on the model's view."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.tabs import Part
from viz import panels
from viz.rollout import FUSIONS


def class_choices(bundle) -> list[tuple[str, int]]:
    return [(name, i) for i, name in enumerate(bundle.labels)]


class RolloutPart(Part):
    title = "Rollout"
    api = "tab_rollout"  # the tab-select event

    def __init__(self, ctx):
        super().__init__(ctx)
        bundle = ctx.service.bundled.bundle
        gr.Markdown(texts.ROLLOUT)
        with gr.Row():
            self.fusion = gr.Radio(list(FUSIONS), value="mean", label="head fusion")
            self.discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="discard ratio")
            self.target = gr.Dropdown(class_choices(bundle), value=None, label="class for gradient rollout")
        with gr.Row():
            self.rollout_img = gr.Image(label="attention rollout (CLS)", elem_id="rollout-img",
                                        interactive=False, format="png")
            self.grad_img = gr.Image(label="gradient rollout (choose a class above)", elem_id="grad-img",
                                     interactive=False, format="png")
        self.inputs = [self.fusion, self.discard, self.target]
        self.names = ["fusion", "discard_ratio", "target"]
        self.outputs = [self.rollout_img, self.grad_img]
        self.model_controls = [self.target]

    def on_model(self, bundle) -> dict:
        return {self.target: gr.Dropdown(choices=class_choices(bundle), value=None)}

    def draw(self, sid, values) -> dict:
        service = self.ctx.service
        analysis = service.current(sid)
        fusion, discard, target = values[self.fusion], float(values[self.discard]), values[self.target]
        grad = None
        if target is not None:  # one backward pass for the class, then cached in the session
            grad = panels.rollout_panel(analysis, fusion, discard, service.gradients(sid, int(target)))
        return {self.rollout_img: panels.rollout_panel(analysis, fusion, discard), self.grad_img: grad}

    def wire(self) -> None:
        ctx = self.ctx
        redraw = guarded(self.handler(lambda values: self.draw(values[ctx.session], values)))
        inputs = [ctx.session, *self.inputs]
        self.fusion.input(redraw, inputs, self.outputs, api_name="rollout_fusion")
        self.target.input(redraw, inputs, self.outputs, api_name="rollout_class")
        self.discard.release(redraw, inputs, self.outputs, api_name="rollout_discard")

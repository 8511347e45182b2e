"""Rotary tab: the loaded model's kernel for the chosen head and query, its step per patch against pi and
the phase of each band over the grid, all drawn with Pillow (the phase and step pictures are the rotary lab's)."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.tabs import Part
from viz import panels


class RotaryPart(Part):
    title = "Rotary"
    api = "rotary"  # the tab-select event
    lazy = True

    def __init__(self, ctx):
        super().__init__(ctx)
        self.about = gr.Markdown(texts.ROTARY, label="rotary", elem_id="rotary-about")
        self.kernel_img = gr.Image(label="relative-position kernel (layer and head from the attention tab)",
                                   show_label=False, elem_id="kernel-img", interactive=False, format="png")
        self.steps_img = gr.Image(label="phase step per patch against pi", show_label=False,
                                  elem_id="steps-img", interactive=False, format="png")
        self.phase_img = gr.Image(label="phase of each band over the grid", show_label=False, elem_id="phase-img",
                                  interactive=False, format="png")
        self.inputs = [ctx.shared["layer"], ctx.shared["head"]]
        self.names = ["layer", "head"]
        self.outputs = [self.about, self.kernel_img, self.steps_img, self.phase_img]

    def clear(self) -> dict:
        return {**super().clear(), self.about: texts.ROTARY}

    def draw(self, sid, values) -> dict:
        service = self.ctx.service
        analysis, data = service.current(sid), service.session(sid)
        bundle = data.bundle
        if not bundle.config.use_rotary:
            return {**self.clear(), self.about: texts.NO_ROTARY}
        layer, head = int(values[self.inputs[0]]), int(values[self.inputs[1]])
        query = data.query or (analysis.grid[0] // 2, analysis.grid[1] // 2)
        return {self.about: texts.ROTARY,
                self.kernel_img: panels.kernel_panel(analysis, layer, head, query),
                self.steps_img: panels.steps_panel(analysis, bundle),
                self.phase_img: panels.phase_panel(analysis, bundle)}

"""Rotary tab: the loaded model's bands, step per patch against pi, and the kernel of the chosen head."""
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
        self.nyquist_img = gr.Image(label="phase step per patch against pi", show_label=False,
                                    elem_id="nyquist-img", interactive=False, format="png")
        self.bands_img = gr.Image(label="frequency bands over the grid", show_label=False, elem_id="bands-img",
                                  interactive=False, format="png")
        self.inputs = [ctx.shared["layer"], ctx.shared["head"]]
        self.names = ["layer", "head"]
        self.outputs = [self.about, self.kernel_img, self.nyquist_img, self.bands_img]

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
                self.nyquist_img: panels.nyquist_panel(analysis, bundle.rotary_scales, bundle.train_grid),
                self.bands_img: panels.bands_panel(analysis)}

"""Head statistics tab: mean attention distance, entropy and share on CLS per layer and head."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.tabs import Part
from viz import panels


class StatsPart(Part):
    title = "Head statistics"
    api = "stats"  # the tab-select event
    lazy = True

    def __init__(self, ctx):
        super().__init__(ctx)
        gr.Markdown(texts.STATS)
        self.stats_img = gr.Image(label="head statistics", show_label=False, elem_id="stats-img",
                                  interactive=False, format="png")
        self.outputs = [self.stats_img]

    def draw(self, sid, values) -> dict:
        return {self.stats_img: panels.stats_panel(self.ctx.service.current(sid))}

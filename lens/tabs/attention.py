"""Attention tab: every head of a layer, one head large (click a patch to query it), the whole model."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.service import UserError
from lens.tabs import Part, click_point
from viz import panels


def index_slider(last: int, value: int, **kwargs) -> gr.Slider:
    """A slider over 0..last; a single layer or head is shown fixed (a slider needs minimum < maximum)."""
    return gr.Slider(minimum=0, maximum=max(1, last), value=value, step=1, interactive=last > 0, **kwargs)


class AttentionPart(Part):
    title = "Attention"
    api = "tab_attention"  # the tab-select event

    def __init__(self, ctx):
        super().__init__(ctx)
        config = ctx.service.bundled.bundle.config
        gr.Markdown(texts.ATTENTION)
        with gr.Row():
            self.layer = index_slider(config.depth - 1, config.depth - 1, label="layer", elem_id="layer")
            self.head = index_slider(config.heads - 1, 0, label="head", elem_id="head")
            self.shared_scale = gr.Checkbox(value=True, label="one colour scale for all heads")
        self.heads_img = gr.Image(label="all heads of the layer", show_label=False, elem_id="heads-img",
                                  interactive=False, format="png", buttons=["download"])
        with gr.Row():
            self.head_img = gr.Image(label="one head: click a patch to use it as the query", elem_id="head-img",
                                     interactive=False, format="png", height=300)
            self.model_img = gr.Image(label="whole model", show_label=False, elem_id="model-img",
                                      interactive=False, format="png", height=300)
        with gr.Row():
            self.query_info = gr.Markdown(texts.QUERY_CLS, label="query")
            self.reset = gr.Button("Reset query to CLS", size="sm")
        self.inputs = [self.layer, self.head, self.shared_scale]
        self.names = ["layer", "head", "shared_scale"]
        self.outputs = [self.heads_img, self.head_img, self.model_img, self.query_info]
        self.model_controls = [self.layer, self.head]
        ctx.shared.update(layer=self.layer, head=self.head)

    def on_model(self, bundle) -> dict:
        c = bundle.config
        return {self.layer: index_slider(c.depth - 1, c.depth - 1), self.head: index_slider(c.heads - 1, 0)}

    def clear(self) -> dict:
        return {**super().clear(), self.query_info: texts.QUERY_CLS}

    def draw(self, sid, values) -> dict:
        service = self.ctx.service
        analysis, query = service.current(sid), service.session(sid).query
        layer, head = self.checked(sid, values[self.layer], values[self.head])
        return {self.heads_img: panels.heads_panel(analysis, layer, query, bool(values[self.shared_scale])),
                self.head_img: panels.head_overlay(analysis, layer, head, query),
                self.model_img: panels.model_panel(analysis),
                self.query_info: texts.QUERY_CLS if query is None else texts.query_text(*query)}

    def checked(self, sid, layer, head) -> tuple[int, int]:
        config = self.ctx.service.session(sid).bundle.config
        layers, heads = config.depth, config.heads
        layer, head = int(layer), int(head)
        if not 0 <= layer < layers or not 0 <= head < heads:
            raise UserError(f"layer {layer}, head {head} do not exist: this model has layers 0..{layers - 1} "
                            f"and heads 0..{heads - 1}")
        return layer, head

    def wire(self) -> None:
        ctx, service = self.ctx, self.ctx.service
        inputs = [ctx.session, *self.inputs]

        def redraw(values):
            return self.draw(values[ctx.session], values)

        def redraw_head(values):
            sid = values[ctx.session]
            layer, head = self.checked(sid, values[self.layer], values[self.head])
            return {self.head_img: panels.head_overlay(service.current(sid), layer, head, service.session(sid).query)}

        @guarded
        def pick(session, layer, head, shared_scale, evt: gr.SelectData):
            analysis = service.current(session)
            width, height = panels.head_overlay(analysis, 0, 0).size
            x, y = click_point(evt.index, width, height)
            grid_h, grid_w = analysis.grid
            service.pick_query(session, int(y * grid_h / height), int(x * grid_w / width))
            return self.draw(session, dict(zip(inputs, (session, layer, head, shared_scale), strict=True)))

        def reset(values):
            service.reset_query(values[ctx.session])
            return redraw(values)

        # Renders only: no model pass. `input` fires for a visitor's changes, not for the ranges a model load
        # sets (which would render before the new analysis exists); always_last drops steps already passed.
        self.layer.input(guarded(self.handler(redraw)), inputs, self.outputs, api_name="layer",
                          trigger_mode="always_last")
        self.shared_scale.input(guarded(self.handler(redraw)), inputs, self.outputs, api_name="shared_scale")
        self.head.input(guarded(self.handler(redraw_head)), inputs, [self.head_img], api_name="head",
                         trigger_mode="always_last")
        self.head_img.select(pick, inputs, self.outputs, api_name="pick_query")
        self.reset.click(guarded(self.handler(reset)), inputs, self.outputs, api_name="reset_query")

"""What-if tab: switch off heads or the rotary rotation in layers, re-run, compare."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.tabs import Part
from viz import panels


def head_choices(config) -> list[tuple[str, int]]:
    """Every (layer, head) as one integer value, layer-major: value = layer * heads + head."""
    return [(f"layer {layer}, head {head}", layer * config.heads + head)
            for layer in range(config.depth) for head in range(config.heads)]


def layer_choices(config) -> list[tuple[str, int]]:
    return [(f"layer {layer}", layer) for layer in range(config.depth)]


def comparison_table(before, after) -> str:
    """Markdown table of the classes in either top 5, with both probabilities and the change."""
    lines = ["| class | before | after | change |", "|---|---|---|---|"]
    for name in dict.fromkeys([name for name, _ in before.top(5)] + [name for name, _ in after.top(5)]):
        i = before.labels.index(name)
        p0, p1 = float(before.probs[i]), float(after.probs[i])
        lines.append(f"| {name} | {p0:.1%} | {p1:.1%} | {p1 - p0:+.1%} |")
    return "\n".join(lines)


class WhatIfPart(Part):
    title = "What-if"
    api = "tab_whatif"  # the tab-select event
    redraw = False

    def __init__(self, ctx):
        super().__init__(ctx)
        config = ctx.service.bundled.bundle.config
        gr.Markdown(texts.WHATIF)
        self.heads_off = gr.CheckboxGroup(head_choices(config), label="switch off heads")
        self.rotary_off = gr.CheckboxGroup(layer_choices(config), label="switch off rotary in layers")
        self.run = gr.Button("Re-run with these switched off", variant="primary")
        with gr.Row():
            self.label = gr.Label(num_top_classes=5, label="prediction after")
            self.table = gr.Markdown(label="what-if table")
        self.before_img = gr.Image(label="attention before (layer from the Attention tab)", interactive=False,
                                   format="png", elem_id="before-img", show_label=False)
        self.after_img = gr.Image(label="attention after", interactive=False, format="png", elem_id="after-img",
                                  show_label=False)
        self.outputs = [self.label, self.table, self.before_img, self.after_img]
        self.model_controls = [self.heads_off, self.rotary_off]

    def on_model(self, bundle) -> dict:
        return {self.heads_off: gr.CheckboxGroup(choices=head_choices(bundle.config), value=[]),
                self.rotary_off: gr.CheckboxGroup(choices=layer_choices(bundle.config), value=[])}

    def clear(self) -> dict:
        return {**super().clear(), self.table: ""}

    def wire(self) -> None:
        ctx, service = self.ctx, self.ctx.service

        @guarded
        def run(sid, heads, layers, layer):
            config = service.session(sid).bundle.config
            off: dict[int, list[int]] = {}
            for value in heads or []:
                layer_index, head = divmod(int(value), config.heads)
                off.setdefault(layer_index, []).append(head)
            before = service.current(sid)
            after = service.whatif(sid, off, [int(v) for v in layers or []])
            layer = min(int(layer), config.depth - 1)
            return {self.label: dict(after.top(5)), self.table: comparison_table(before, after),
                    self.before_img: panels.heads_panel(before, layer),
                    self.after_img: panels.heads_panel(after, layer)}

        self.run.click(run, [ctx.session, self.heads_off, self.rotary_off, ctx.shared["layer"]], self.outputs,
                       api_name="whatif", concurrency_id="pass")

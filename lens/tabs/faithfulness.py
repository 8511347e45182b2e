"""Faithfulness tab: which of the explanation maps can be trusted for this image.

One button runs the scorecard (`rvt.faithfulness`): every method's map scored by deletion and
insertion, the cascading model-randomisation check, infidelity and sensitivity, with progress and
a cancel button; the result is the table and the two figures the paper-style checks draw.
"""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.tabs import Part, heavy, wire_cancel
from lens.tabs.rollout import class_choices
from rvt.faithfulness import FILLS, RANDOM
from viz.faithfulness import curves_panel, randomization_panel, scorecard_panel


class FaithfulnessPart(Part):
    title = "Faithfulness"
    api = "tab_faithfulness"  # the tab-select event
    redraw = False  # the result of an explicit action: cleared when the image or the model changes

    def __init__(self, ctx):
        super().__init__(ctx)
        gr.Markdown(texts.FAITHFULNESS)
        with gr.Row():
            self.fill = gr.Radio(list(FILLS), value=FILLS[0], label="fill for deletion / insertion")
            self.target = gr.Dropdown(class_choices(ctx.service.bundled.bundle), value=None,
                                      label="class (default: predicted)")
        with gr.Row():
            self.run = gr.Button("Score every map", variant="primary")
            self.stop = gr.Button("Cancel", variant="stop")
        self.note = gr.Markdown(label="scorecard note", elem_id="faith-note")
        self.table_img = gr.Image(label="scorecard", elem_id="faith-table", show_label=False, interactive=False,
                                  format="png")
        self.curves_img = gr.Image(label="deletion and insertion curves", elem_id="faith-curves", show_label=False,
                                   interactive=False, format="png")
        self.random_img = gr.Image(label="model-randomisation check", elem_id="faith-random", show_label=False,
                                   interactive=False, format="png")
        self.outputs = [self.note, self.table_img, self.curves_img, self.random_img]
        self.model_controls = [self.target]

    def on_model(self, bundle) -> dict:
        return {self.target: gr.Dropdown(choices=class_choices(bundle), value=None)}

    def clear(self) -> dict:
        return {**super().clear(), self.note: ""}

    def wire(self) -> None:
        ctx, service = self.ctx, self.ctx.service

        @guarded
        def run(sid, fill, target, progress=gr.Progress()):
            progress(0.0, desc="scorecard")
            card = service.faithfulness(sid, fill, target, progress=lambda f: progress(f, desc="scorecard"))
            label = service.current(sid).labels[card.target]
            failing = [m for m in card.methods if m != RANDOM and not card.randomization.passes(m)]
            timing = f"{card.seconds:.1f} s of the scoring thread's CPU time" if card.seconds else "from the cache"
            note = texts.FAITHFULNESS_RESULT.format(
                label=label, timing=timing, fill=card.fill, baseline=card.baseline,
                failing=", ".join(failing) if failing else "none")
            return {self.note: note, self.table_img: scorecard_panel(card, label),
                    self.curves_img: curves_panel(card, label=label), self.random_img: randomization_panel(card)}

        job = heavy(service, run)
        event = self.run.click(job, [ctx.session, self.fill, self.target], self.outputs, api_name="faithfulness",
                               concurrency_id="heavy")
        wire_cancel(self.stop, ctx, [event], "cancel_faithfulness")

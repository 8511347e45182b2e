"""Attributions tab: captum methods for a class, with progress and a cancel button."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.tabs import Part, heavy, wire_cancel
from lens.tabs.rollout import class_choices
from viz.attributions import BASELINES, METHODS, SMOOTH_COPIES, attribution_image, describe


class AttributionsPart(Part):
    title = "Attributions"
    api = "tab_attributions"  # the tab-select event
    redraw = False

    def __init__(self, ctx):
        super().__init__(ctx)
        service = ctx.service
        gr.Markdown(texts.ATTRIBUTIONS)
        with gr.Row():  # two rows: in one, the dropdowns cut their values and the slider its maximum
            self.method = gr.Dropdown(list(METHODS), value=METHODS[0], label="method", min_width=200)
            self.baseline = gr.Dropdown(list(BASELINES), value="black", label="baseline (IG, Occlusion, GradientShap)",
                                        min_width=200)
            self.target = gr.Dropdown(class_choices(service.bundled.bundle), value=None,
                                      label="class (default: predicted)", min_width=200)
        with gr.Row():
            self.steps = gr.Slider(4, service.limits.max_steps, value=32, step=4,
                                   label="steps (IG) / samples (GradientShap)", min_width=300)
            self.smooth = gr.Checkbox(value=False, label=f"SmoothGrad ({SMOOTH_COPIES} noisy copies)", min_width=200)
        with gr.Row():
            self.run = gr.Button("Compute attribution", variant="primary")
            self.stop = gr.Button("Cancel", variant="stop")
        self.attr_img = gr.Image(label="attribution", show_label=False, elem_id="attr-img", interactive=False,
                                 format="png")
        self.outputs = [self.attr_img]
        self.model_controls = [self.target]

    def on_model(self, bundle) -> dict:
        return {self.target: gr.Dropdown(choices=class_choices(bundle), value=None)}

    def wire(self) -> None:
        ctx, service = self.ctx, self.ctx.service

        @guarded
        def run(sid, method, steps, baseline, smooth, target, progress=gr.Progress()):
            progress(0.0, desc=method)
            attr, target = service.attribution(sid, method, int(steps), bool(smooth), target,
                                               progress=lambda f: progress(f, desc=method), baseline=baseline)
            analysis, bundle = service.current(sid), service.session(sid).bundle
            title = f"{method}{' + SmoothGrad' if smooth else ''} for '{analysis.labels[target]}'"
            note = describe(method, baseline, bundle.preprocess, bool(smooth), analysis.image.shape[:2],
                            int(steps))
            return attribution_image(analysis.image, attr, title, note)

        job = heavy(service, run)
        event = self.run.click(job, [ctx.session, self.method, self.steps, self.baseline, self.smooth, self.target],
                               self.attr_img, api_name="attribution", concurrency_id="heavy")
        wire_cancel(self.stop, ctx, [event], "cancel_attribution")

"""Export tab: every panel, summary.json and tensors.npz in one zip."""
from __future__ import annotations

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.tabs import Part, heavy, wire_cancel


class ExportPart(Part):
    title = "Export"
    api = "tab_export"  # the tab-select event
    redraw = False

    def __init__(self, ctx):
        super().__init__(ctx)
        gr.Markdown(texts.EXPORT)
        with gr.Row():
            self.run = gr.Button("Build the zip")
            self.stop = gr.Button("Cancel", variant="stop")
        self.file = gr.File(label="report", elem_id="export-file")
        self.outputs = [self.file]

    def wire(self) -> None:
        ctx, service = self.ctx, self.ctx.service

        @guarded
        def run(sid, progress=gr.Progress()):
            return str(service.export(sid, progress=lambda f, what: progress(f, desc=what)))

        event = self.run.click(heavy(service, run), [ctx.session], self.file, api_name="export", concurrency_id="heavy")
        wire_cancel(self.stop, ctx, [event], "cancel_export")

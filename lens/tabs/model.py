"""The model picker: the bundled checkpoint, an uploaded one, or an untrained RvT of a chosen size."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from lens import texts
from lens.service import RANDOM_RANGES, RandomSpec
from lens.tabs import Part

BUNDLED, UPLOADED, RANDOM = "Bundled Fashion-MNIST RvT", "Upload a checkpoint", "Random RvT (untrained)"


def model_summary(bundle) -> str:
    c = bundle.config
    params = sum(p.numel() for p in bundle.model.parameters())
    notes = "".join(f"\n- note: {n}" for n in bundle.notes)
    return (f"**{Path(bundle.source).name or 'random'}**: {params:,} parameters, {c.depth} layers x {c.heads} heads "
            f"(dim_head {c.dim_head}), trained at {c.image_size} px with {c.patch_size} px patches, "
            f"{c.channels} channel(s), rotary {'on' if c.use_rotary else 'off'}, "
            f"depthwise-conv queries {'on' if c.use_ds_conv else 'off'}, device {bundle.device}.{notes}")


class ModelPart(Part):
    def __init__(self, ctx):
        super().__init__(ctx)
        with gr.Accordion("Model", open=False):
            gr.Markdown(texts.MODEL)
            self.info = gr.Markdown(model_summary(ctx.service.bundled.bundle), elem_id="model-info")
            self.source = gr.Radio([BUNDLED, UPLOADED, RANDOM], value=BUNDLED, label="model")
            self.file = gr.File(label="checkpoint (.safetensors, or a vit-pytorch state_dict .pt/.pth)",
                                file_types=[".safetensors", ".pt", ".pth"], type="filepath")
            with gr.Row():
                self.hint_size = gr.Number(label="image_size (if asked)", precision=0, value=None)
                self.hint_patch = gr.Number(label="patch_size (if asked)", precision=0, value=None)
                self.hint_channels = gr.Number(label="channels (if asked)", precision=0, value=None)
            self.hint_rotary = gr.Checkbox(value=True, label="use_rotary (not stored in a state_dict)")
            defaults = RandomSpec()
            self.random = {}
            with gr.Row():
                for name in ("dim", "depth", "heads"):
                    self.random[name] = self.spec_slider(name, defaults)
            with gr.Row():
                for name in ("dim_head", "image_size", "patch_size"):
                    self.random[name] = self.spec_slider(name, defaults)
            self.load = gr.Button("Load model")
        self.inputs = [self.source, self.file, self.hint_size, self.hint_patch, self.hint_channels, self.hint_rotary,
                       *self.random.values()]
        self.names = ["source", "checkpoint", "image_size", "patch_size", "channels", "use_rotary",
                      *(f"random_{name}" for name in self.random)]

    @staticmethod
    def spec_slider(name: str, defaults: RandomSpec) -> gr.Slider:
        lo, hi, step = RANDOM_RANGES[name]
        return gr.Slider(lo, hi, value=getattr(defaults, name), step=step, label=f"random: {name}")

    def load_model(self, sid: str, values: dict):
        service, source = self.ctx.service, values[self.source]
        if source == UPLOADED:
            if not values[self.file]:
                raise gr.Error("Choose a checkpoint file (.safetensors, .pt or .pth) first.")
            hints = {name: int(values[c]) for name, c in (("image_size", self.hint_size),
                                                           ("patch_size", self.hint_patch),
                                                           ("channels", self.hint_channels)) if values[c]}
            return service.load_checkpoint(sid, values[self.file], use_rotary=bool(values[self.hint_rotary]),
                                           **hints)
        if source == RANDOM:
            return service.random_model(sid, RandomSpec(**{k: int(values[c]) for k, c in self.random.items()}))
        return service.use_bundled(sid)

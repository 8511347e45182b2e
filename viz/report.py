"""Every panel for one image, written to a folder: PNGs, summary.json and the captured tensors."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from rvt.analysis import Analysis, attention_gradients
from rvt.checkpoint import Bundle

from . import panels
from .attributions import attribute, attribution_figure
from .render import figure_to_image
from .rotary import aliasing_bands
from .stats import head_stats


def summary(analysis: Analysis, bundle: Bundle) -> dict:
    return {
        "prediction": [{"label": name, "probability": p} for name, p in analysis.top(5)],
        "input_size": list(analysis.image.shape[:2]),
        "grid": list(analysis.grid),
        "heads_off": {str(k): v for k, v in analysis.heads_off.items()},
        "rotary_off": analysis.rotary_off,
        "head_stats": head_stats(analysis.trace.attention, analysis.grid, analysis.patch_size),
        "aliasing_bands": aliasing_bands(bundle.rotary_scales, analysis.grid),
        "model": bundle.config.to_dict(),
        "checkpoint": bundle.source,
    }


def write_report(analysis: Analysis, bundle: Bundle, out: Path, *, attributions: bool = True,
                 progress: Callable[[float, str], None] | None = None) -> list[Path]:
    """Write every panel of `analysis` under `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    tell = progress or (lambda fraction, what: None)
    top_class = int(analysis.probs.argmax())
    h, w = analysis.grid
    centre = (h // 2, w // 2)
    jobs: dict[str, Callable[[], Image.Image]] = {
        "input": lambda: Image.fromarray(analysis.image),
        "predictions": lambda: panels.predictions_panel(analysis),
        "model_view": lambda: panels.model_panel(analysis),
        "rollout": lambda: panels.rollout_panel(analysis),
        "gradient_rollout": lambda: panels.rollout_panel(
            analysis, gradients=attention_gradients(bundle, analysis, top_class)),
        "head_stats": lambda: panels.stats_panel(analysis),
        "rotary_bands": lambda: panels.bands_panel(analysis),
        "rotary_nyquist": lambda: panels.nyquist_panel(analysis, bundle.rotary_scales, bundle.train_grid),
    }
    for layer in analysis.trace.layers:
        jobs[f"attention_layer{layer}"] = lambda layer=layer: panels.heads_panel(analysis, layer)
        jobs[f"attention_layer{layer}_centre_query"] = lambda layer=layer: panels.heads_panel(analysis, layer, centre)
        jobs[f"rotary_kernel_layer{layer}_head0"] = lambda layer=layer: panels.kernel_panel(analysis, layer, 0, centre)
    if attributions:
        for method in ("Integrated Gradients", "Saliency", "Occlusion", "GradientShap"):
            def job(method=method):
                attr = attribute(bundle.model, analysis.input.to(bundle.device), top_class, method)
                return figure_to_image(attribution_figure(analysis.image, attr.cpu(),
                                                          f"{method}: {analysis.labels[top_class]}"))
            jobs["attribution_" + method.lower().replace(" ", "_")] = job
    written = []
    for i, (name, make) in enumerate(jobs.items()):
        tell(i / (len(jobs) + 2), name)
        path = out / f"{name}.png"
        make().save(path)
        written.append(path)
    (out / "summary.json").write_text(json.dumps(summary(analysis, bundle), indent=2))
    trace = analysis.trace
    np.savez_compressed(out / "tensors.npz", attention=trace.attention.numpy(), logits=trace.logits.numpy(),
                        rotary_sin=trace.rotary[0].numpy(), rotary_cos=trace.rotary[1].numpy(),
                        q=trace.qk("q").numpy(), k=trace.qk("k").numpy(),
                        q_rot=trace.qk("q_rot").numpy(), k_rot=trace.qk("k_rot").numpy(),
                        input=analysis.input.numpy(), grid=np.array(analysis.grid))
    tell(1.0, "done")
    return [*written, out / "summary.json", out / "tensors.npz"]

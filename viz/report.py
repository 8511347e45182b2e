"""Every panel for one image, written to a folder: PNGs, summary.json and the captured tensors."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rvt.analysis import Analysis, attention_gradients
from rvt.checkpoint import Bundle
from rvt.faithfulness import FaithfulnessConfig, MapSettings, Scorecard, scorecard

from . import panels
from .attributions import METHODS, attribute, attribution_figure, attribution_image, describe
from .faithfulness import (
    curves_figure,
    curves_panel,
    randomization_figure,
    randomization_panel,
    scorecard_figure,
    scorecard_panel,
)
from .rotary import aliasing_bands
from .stats import head_stats


def summary(analysis: Analysis, bundle: Bundle, faithfulness: Scorecard | None = None) -> dict:
    """What summary.json holds; with a scorecard, "faithfulness" (method -> numbers, the floor under "random")
    and "faithfulness_settings" (fill, baseline, rule, how to read each metric)."""
    extra = {}
    if faithfulness is not None:
        settings = faithfulness.settings()
        if analysis.heads_off or analysis.rotary_off:
            settings["note"] = "computed on the model without the what-if interventions"
        extra = {"faithfulness": faithfulness.summary(), "faithfulness_settings": settings}
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
        **extra,
    }


def write_report(analysis: Analysis, bundle: Bundle, out: Path, *, attributions: bool = True,
                 faithfulness: bool = True, baseline: str = "black",
                 progress: Callable[[float, str], None] | None = None,
                 check: Callable[[], None] | None = None) -> list[Path]:
    """Write every panel of `analysis` under `out` as the app draws it (PNG), and its charts as vector
    SVGs for print under out/print/; returns the files written. check: called between the
    scorecard's passes (it raises to cancel); `progress` is called between panels.

    faithfulness: also score every explanation method (summary.json's "faithfulness", and the curves,
    randomisation and scorecard pictures under out/faithfulness/). baseline: the attributions' baseline.
    """
    out.mkdir(parents=True, exist_ok=True)
    tell = progress or (lambda fraction, what: None)
    top_class = int(analysis.probs.argmax())
    label = analysis.labels[top_class]
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
    }
    if bundle.config.use_rotary:
        jobs["rotary_phase"] = lambda: panels.phase_panel(analysis, bundle)
        jobs["rotary_steps"] = lambda: panels.steps_panel(analysis, bundle)
    for layer in analysis.trace.layers:
        jobs[f"attention_layer{layer}"] = lambda layer=layer: panels.heads_panel(analysis, layer)
        jobs[f"attention_layer{layer}_centre_query"] = lambda layer=layer: panels.heads_panel(analysis, layer, centre)
        if bundle.config.use_rotary:
            jobs[f"rotary_kernel_layer{layer}_head0"] = lambda layer=layer: panels.kernel_panel(analysis, layer, 0,
                                                                                                centre)
    attributed: dict[str, tuple[str, torch.Tensor, str]] = {}  # name -> (method, map, note): the print SVGs
    if attributions:
        for method in METHODS:
            name = "attribution_" + method.lower().replace(" ", "_")

            def job(method=method, name=name):
                attr = attribute(bundle.model, analysis.input.to(bundle.device), top_class, method,
                                 baseline=baseline, preprocess=bundle.preprocess).cpu()
                note = describe(method, baseline, bundle.preprocess, image_hw=analysis.image.shape[:2])
                attributed[name] = method, attr, note
                return attribution_image(analysis.image, attr, f"{method}: {label}", note)
            jobs[name] = job
    card = None
    if faithfulness:
        tell(0.0, "faithfulness")
        card = scorecard(bundle.model, analysis.input.to(bundle.device), top_class, bundle.preprocess,
                         FaithfulnessConfig(maps=MapSettings(baseline=baseline)), check=check)
        (out / "faithfulness").mkdir(exist_ok=True)
        jobs["faithfulness/curves"] = lambda: curves_panel(card, label=label)
        jobs["faithfulness/randomization"] = lambda: randomization_panel(card)
        jobs["faithfulness/scorecard"] = lambda: scorecard_panel(card, label)
    written = []
    for i, (name, make) in enumerate(jobs.items()):
        tell(i / (len(jobs) + 2), name)
        path = out / f"{name}.png"
        make().save(path)
        written.append(path)
    tell(len(jobs) / (len(jobs) + 2), "print-quality SVGs")
    (out / "print").mkdir(exist_ok=True)
    figures = panels.print_figures(analysis, bundle, centre)
    figures |= {name: attribution_figure(analysis.image, attr, f"{method}: {label}", note)
                for name, (method, attr, note) in attributed.items()}
    if card is not None:
        figures |= {"faithfulness_curves": curves_figure(card, label=label),
                    "faithfulness_randomization": randomization_figure(card),
                    "faithfulness_scorecard": scorecard_figure(card, label)}
    for name, figure in figures.items():
        path = out / "print" / f"{name}.svg"
        figure.savefig(path, format="svg")
        written.append(path)
    (out / "summary.json").write_text(json.dumps(summary(analysis, bundle, card), indent=2))
    trace = analysis.trace
    np.savez_compressed(out / "tensors.npz", attention=trace.attention.numpy(), logits=trace.logits.numpy(),
                        rotary_sin=trace.rotary[0].numpy(), rotary_cos=trace.rotary[1].numpy(),
                        q=trace.qk("q").numpy(), k=trace.qk("k").numpy(),
                        q_rot=trace.qk("q_rot").numpy(), k_rot=trace.qk("k_rot").numpy(),
                        input=analysis.input.numpy(), grid=np.array(analysis.grid))
    tell(1.0, "done")
    return [*written, out / "summary.json", out / "tensors.npz"]

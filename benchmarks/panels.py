"""Panel rendering time for one image with the bundled model (or a same-sized random RvT), at the
training size: what each tab costs server-side (target: every figure <= 30 ms p50). The attribution
and the scorecard are computed once; their rows time the pictures the tabs draw from them.

The default panel set is what the explorer draws for a new image; the other panels are drawn
when their tab opens. Medians (p50) of interleaved repeats on the thread-CPU clock, one torch
thread; ratios are against the model's own analysis pass in the same process. The scale table
(28-224 px) is `benchmarks/scale.py`. `python benchmarks/panels.py [--repeats N]`.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
# isort: off
from common import interleaved_medians, print_table  # noqa: E402  (first: sets the process env before torch)
# isort: on

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from rvt import Preprocess, RvT, RvTConfig, load_checkpoint, save_checkpoint  # noqa: E402
from rvt.analysis import analyze  # noqa: E402
from rvt.device import thread_policy  # noqa: E402
from rvt.faithfulness import scorecard  # noqa: E402
from viz import panels  # noqa: E402
from viz.attributions import attribute, attribution_image, describe  # noqa: E402
from viz.faithfulness import curves_panel, randomization_panel, scorecard_panel  # noqa: E402
from viz.render import figure_to_image  # noqa: E402
from viz.rotary import kernel_figure  # noqa: E402

CHECKPOINT = ROOT / "assets" / "rvt_fashion_mnist.safetensors"
EXAMPLE = ROOT / "assets" / "examples"


def bundle_and_image():
    if CHECKPOINT.is_file():
        bundle, source = load_checkpoint(CHECKPOINT, "cpu"), "bundled checkpoint"
    else:
        torch.manual_seed(0)
        path = Path(tempfile.mkdtemp()) / "random.safetensors"
        save_checkpoint(path, RvT.from_config(RvTConfig()), [str(i) for i in range(10)], Preprocess())
        bundle, source = load_checkpoint(path, "cpu"), "random RvT of the bundled size"
    examples = sorted(EXAMPLE.glob("*.png"))
    image = Image.open(examples[0]) if examples else Image.new("L", (112, 112), 0)
    return bundle, image, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    thread_policy(1)
    bundle, image, source = bundle_and_image()
    analysis = analyze(bundle, image)
    last = analysis.trace.layers[-1]
    centre = (analysis.grid[0] // 2, analysis.grid[1] // 2)
    target = int(analysis.probs.argmax())
    attr = attribute(bundle.model, analysis.input, target, preprocess=bundle.preprocess)  # what the tabs draw:
    card = scorecard(bundle.model, analysis.input, target, bundle.preprocess)  # computed once, drawn each time
    note = describe("Integrated Gradients", "black", bundle.preprocess)
    timings = interleaved_medians({
        "analysis pass (reference)": lambda: analyze(bundle, image),
        "default panel set": lambda: panels.default_panels(analysis),
        "head switch (one overlay)": lambda: panels.head_overlay(analysis, last, 1),
        "query row, all heads": lambda: panels.heads_panel(analysis, last, centre),
        "rollout": lambda: panels.rollout_panel(analysis),
        "predictions chart": lambda: panels.predictions_panel(analysis),
        "head statistics": lambda: panels.stats_panel(analysis),
        "rotary kernel": lambda: panels.kernel_panel(analysis, last, 0, centre),
        "rotary step per patch": lambda: panels.steps_panel(analysis, bundle),
        "rotary phase": lambda: panels.phase_panel(analysis, bundle),
        "attribution picture": lambda: attribution_image(analysis.image, attr, "Integrated Gradients", note),
        "faithfulness curves": lambda: curves_panel(card),
        "faithfulness cascade": lambda: randomization_panel(card),
        "faithfulness table": lambda: scorecard_panel(card),
        "rotary kernel, matplotlib (the export's figure, rasterised)": lambda: figure_to_image(kernel_figure(
            *analysis.trace.rotary, analysis.grid, centre,
            {n: analysis.trace.qk(n)[-1, 0, 0] for n in ("q", "k", "q_rot", "k_rot")})),
    }, args.repeats)
    reference = timings["analysis pass (reference)"]
    print(f"{source}, grid {analysis.grid}, torch threads {torch.get_num_threads()}, median of {args.repeats}")
    print_table(["panel", "p50 ms", "x analysis pass"],
                [[name, f"{t * 1e3:.1f}", f"{t / reference:.2f}x"] for name, t in timings.items()])


if __name__ == "__main__":
    main()

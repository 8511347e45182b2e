"""Rotary lab: time to answer one control change (settings -> JSON and the three lab pictures).

Thread-CPU time (time.thread_time, so other processes on a shared host do not count), variants
interleaved, p50 and p90 of `--repeats` runs; ratios against the matplotlib Nyquist chart (the export's;
the Rotary tab drew it before), viz.rotary.nyquist_figure rendered to an image in the same process.
Issue 13's target: <= 100 ms p50 per control. `python benchmarks/rotary_lab.py [--repeats N]`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import print_table  # noqa: E402
from panels import bundle_and_image  # noqa: E402

from rvt.analysis import analyze  # noqa: E402
from rvt.rotary_lab import (  # noqa: E402
    band_usage,
    build_schedule,
    head_kernels,
    lab_bands,
    lab_view,
    model_schedule,
)
from viz.render import figure_to_image  # noqa: E402
from viz.rotary import nyquist_figure  # noqa: E402
from viz.rotary_lab import kernel_figure, phase_figure, steps_figure, usage_figure  # noqa: E402

SETTINGS = {  # name: (schedule, rows, cols, dim_head, max_freq or base, training grid)
    "28/4 (7x7, d24)": ("rvt", 7, 7, 24, 28.0, None),
    "28/4 at 2x (14x14)": ("rvt", 14, 14, 24, 28.0, (7, 7)),
    "224/16 (14x14, d64)": ("rvt", 14, 14, 64, 224.0, None),
    "224/16 at 2x (28x28)": ("rvt", 28, 28, 64, 224.0, (14, 14)),
    "RoPE 64x64, d256, YaRN": ("rope", 64, 64, 256, 100.0, (16, 16)),
}


def thread_percentiles(variants: dict[str, Callable[[], object]], repeats: int) -> dict[str, tuple[float, float]]:
    """(p50, p90) thread-CPU seconds per call, variants called round-robin after one warm-up each."""
    for fn in variants.values():
        fn()
    samples = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.thread_time()
            fn()
            samples[name].append(time.thread_time() - start)
    return {name: (statistics.median(t), statistics.quantiles(t, n=10)[-1]) for name, t in samples.items()}


def control_change(kind, rows, cols, dim_head, value, train) -> Callable[[], object]:
    scaling = "yarn" if kind == "rope" and train else "native"

    def run():
        view = lab_view(build_schedule(kind, dim_head, value), (rows, cols), train, scaling)
        return view.to_json(), phase_figure(view), steps_figure(view), kernel_figure(view)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(1)
    bundle, image, source = bundle_and_image()
    analysis = analyze(bundle, image)
    schedule = model_schedule(bundle.model)
    layer = analysis.trace.layers[-1]
    model_view = lab_view(schedule, analysis.grid, bundle.train_grid)
    view = lab_view(build_schedule("rvt", 24, 28.0), (7, 7))
    variants = {"Rotary tab Nyquist, matplotlib (reference)":
                lambda: figure_to_image(nyquist_figure(bundle.rotary_scales, analysis.grid, bundle.train_grid))}
    variants |= {f"control change, {name}": control_change(*s) for name, s in SETTINGS.items()}
    variants |= {
        "rotary_lab API JSON, 28/4": lambda: lab_bands("rvt", 7, 7, 24, 28.0),
        "phase picture, 28/4": lambda: phase_figure(view),
        "steps picture, 28/4": lambda: steps_figure(view),
        "kernel picture, 28/4": lambda: kernel_figure(view),
        "head kernels + picture (model)": lambda: kernel_figure(model_view, head_kernels(analysis, schedule, layer, 0)),
        "band usage + picture (model)": lambda: usage_figure(band_usage(analysis, schedule)),
    }
    timings = thread_percentiles(variants, args.repeats)
    reference = timings["Rotary tab Nyquist, matplotlib (reference)"][0]
    print(f"{source}; thread-CPU time, torch threads 1, {args.repeats} interleaved repeats")
    print_table(["variant", "p50 ms", "p90 ms", "p50 x reference"],
                [[name, f"{p50 * 1e3:.1f}", f"{p90 * 1e3:.1f}", f"{p50 / reference:.2f}x"]
                 for name, (p50, p90) in timings.items()])


if __name__ == "__main__":
    main()

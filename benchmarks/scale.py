"""Issue 10's scale table: analysis, panels, rollout and head statistics at 28/112/168/224 px for
the bundled model, with peak memory, against the figures the issue measured before the rewrite.

Each size runs in its own process (a clean peak-RSS reading; freed maps of a larger size would
otherwise hide a smaller one's growth), with one torch thread, thread-CPU time, variants interleaved.
`python benchmarks/scale.py [--sizes 28 112 168 224] [--budget 1GB]`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import interleaved_medians, peak_growth, print_table  # noqa: E402  (before torch: process env)

CHECKPOINT = ROOT / "assets" / "rvt_fashion_mnist.safetensors"
EXAMPLE = ROOT / "assets" / "examples" / "9_ankle-boot.png"
# Issue 10, "What was measured" (same 2-core host, one thread, thread-CPU clock): ms, and MB in brackets.
BEFORE = {
    "analyze": {28: "5", 112: "106 (100 MB)", 168: "745 (361 MB)", 224: "2234 (1102 MB)"},
    "heads panel": {28: "0.3-4", 112: "~36", 168: "~177", 224: "~500 (1857 MB)"},
    "head switch": {28: "0.3-4", 112: "~36", 168: "~177", 224: "~500 (1857 MB)"},
    "rollout": {28: "1", 112: "108", 168: "1252", 224: "6565 (2233 MB)"},
    "head statistics": {28: "220", 112: "422", 168: "1308", 224: "3714 (4561 MB)"},
    "upload (analyze + default panels + chart)": {224: "~10000 (2200 MB)"},
}
REPEATS = {28: 20, 112: 8, 168: 4, 224: 3}


def measure(size: int, budget: str) -> dict:
    """Timings (ms) and peaks (MB) at one size, in this process."""
    import torch
    from PIL import Image

    from rvt import load_checkpoint
    from rvt.analysis import analyze, analyze_input, attention_gradients, prepare
    from rvt.budget import estimate_bytes, parse_bytes
    from rvt.device import thread_policy
    from viz import panels

    thread_policy(1)
    bundle = load_checkpoint(CHECKPOINT, "cpu")
    image = Image.open(EXAMPLE)
    hw = (size, size)
    analyze(bundle, image)  # warm-up: lazy imports, first allocations

    def upload():  # what the explorer does for a new image: budget check, pass, first panels, chart
        analysis = analyze(bundle, image, hw, budget=parse_bytes(budget))
        panels.default_panels(analysis)
        panels.predictions_panel(analysis)
        return analysis

    analysis, upload_peak = peak_growth(upload)
    last = analysis.trace.layers[-1]
    x, shown = prepare(bundle, image, hw)
    gradients = attention_gradients(bundle, analysis, 0)
    steps = {
        "analyze": lambda: analyze(bundle, image, hw),
        "  preprocess": lambda: prepare(bundle, image, hw),
        "  captured pass": lambda: analyze_input(bundle, x, shown),
        "heads panel": lambda: panels.heads_panel(analysis, last),
        "head switch": lambda: panels.head_overlay(analysis, last, 1),
        "model panel": lambda: panels.model_panel(analysis),
        "rollout": lambda: panels.rollout_panel(analysis),
        "head statistics": lambda: panels.stats_panel(analysis),
        "predictions chart": lambda: panels.predictions_panel(analysis),
        "default panels": lambda: panels.default_panels(analysis),
        "attention gradients (pass)": lambda: attention_gradients(bundle, analysis, 0),
        "gradient rollout": lambda: panels.rollout_panel(analysis, "max", 0.0, gradients),
    }
    peaks = {name: peak_growth(fn)[1] for name, fn in steps.items() if name not in ("analyze", "  captured pass")}
    del analysis
    peaks["analyze"] = peaks["  captured pass"] = peak_growth(steps["analyze"])[1]
    analysis = analyze(bundle, image, hw)
    times = interleaved_medians(steps, REPEATS.get(size, 3))
    return {"size": size, "ms": {k: v * 1e3 for k, v in times.items()},
            "peak_mb": {k: v / 1e6 for k, v in peaks.items()},
            "upload_peak_mb": upload_peak / 1e6, "estimate_mb": estimate_bytes(bundle.config, hw) / 1e6,
            "gradients_estimate_mb": estimate_bytes(bundle.config, hw, gradients=True) / 1e6,
            "attention_dtype": str(analysis.trace.layer_attention(last).dtype).replace("torch.", ""),
            "torch_threads": torch.get_num_threads()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[28, 112, 168, 224])
    parser.add_argument("--budget", default="1GB", help="memory budget the upload is checked against")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: measure one size
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.budget)))
        return
    results = []
    for size in args.sizes:
        out = subprocess.run([sys.executable, __file__, "--one", str(size), "--budget", args.budget],
                             capture_output=True, text=True, check=True)
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{size} px done", file=sys.stderr)
    sizes = [r["size"] for r in results]
    cell = lambda r, step: f"{r['ms'][step]:.1f} ({r['peak_mb'][step]:.0f} MB)"  # noqa: E731
    rows = []
    for step in ("analyze", "  preprocess", "  captured pass", "heads panel", "head switch", "model panel",
                 "rollout", "head statistics", "predictions chart", "default panels", "attention gradients (pass)",
                 "gradient rollout"):
        rows.append([step, *[cell(r, step) for r in results], *[BEFORE.get(step, {}).get(s, "") for s in sizes]])
    rows.append(["upload (analyze + default panels + chart)",
                 *[f"{r['ms']['analyze'] + r['ms']['default panels'] + r['ms']['predictions chart']:.0f} "
                   f"({r['upload_peak_mb']:.0f} MB)" for r in results],
                 *[BEFORE["upload (analyze + default panels + chart)"].get(s, "") for s in sizes]])
    rows.append(["budget estimate for the upload", *[f"{r['estimate_mb']:.0f} MB" for r in results],
                 *[""] * len(sizes)])
    rows.append(["budget estimate with gradient rollout", *[f"{r['gradients_estimate_mb']:.0f} MB" for r in results],
                 *[""] * len(sizes)])
    rows.append(["stored attention dtype", *[r["attention_dtype"] for r in results], *[""] * len(sizes)])
    print(f"{CHECKPOINT.name}, torch threads {results[0]['torch_threads']}, thread-CPU ms (peak RSS growth), "
          f"medians of interleaved repeats {[REPEATS.get(s, 3) for s in sizes]}")
    print_table(["step", *[f"{s} px now" for s in sizes], *[f"{s} px before" for s in sizes]], rows)


if __name__ == "__main__":
    main()

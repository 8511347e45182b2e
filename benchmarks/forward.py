"""Forward latency: vit-pytorch's RvT vs ours (fused fast path) vs ours under capture.

Same weights, same inputs, one process, interleaved repeats; prints median latencies and the
ratios to the reference. `python benchmarks/forward.py [--repeats N] [--device cuda]`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1] / "tests")]
from common import interleaved_medians, print_table  # noqa: E402
from reference import load_reference_rvt  # noqa: E402

from rvt import RvT, capture, pick_device  # noqa: E402

MODELS = {
    "224/16 (dim 384, depth 6, heads 6)": dict(image_size=224, patch_size=16, num_classes=1000, dim=384, depth=6,
                                               heads=6, dim_head=64, mlp_dim=1536, channels=3),
    "28/4 (dim 96, depth 6, heads 4)": dict(image_size=28, patch_size=4, num_classes=10, dim=96, depth=6,
                                            heads=4, dim_head=24, mlp_dim=192, channels=1),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    args = parser.parse_args()
    device = pick_device(args.device)
    reference = load_reference_rvt()
    rows = []
    for name, config in MODELS.items():
        torch.manual_seed(0)
        ref = reference.RvT(**config).to(device).eval()
        ours = RvT(**config).to(device).eval()
        ours.load_state_dict(ref.state_dict())
        for batch in args.batches:
            x = torch.randn(batch, config["channels"], config["image_size"], config["image_size"], device=device)

            def run(model, captured=False, x=x):
                def call():
                    with torch.inference_mode():
                        if captured:
                            with capture(model):
                                model(x)
                        else:
                            model(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                return call

            t = interleaved_medians({"ref": run(ref), "fast": run(ours), "capture": run(ours, True)}, args.repeats)
            rows.append([name, batch, f"{t['ref'] * 1e3:.1f}", f"{t['fast'] * 1e3:.1f}", f"{t['capture'] * 1e3:.1f}",
                         f"{t['fast'] / t['ref']:.2f}x", f"{t['capture'] / t['ref']:.2f}x"])
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats}")
    print_table(["model", "batch", "reference ms", "fast ms", "capture ms", "fast/ref", "capture/ref"], rows)


if __name__ == "__main__":
    main()

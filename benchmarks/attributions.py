"""IG with SmoothGrad: what it costs and how close it comes, shared path points against captum's NoiseTunnel.

Time: IG alone (the reference), IG + SmoothGrad as the app computes it (8 noisy copies sharing the
`steps` path points) and as captum's NoiseTunnel does (every copy all `steps`: 8x the passes), at one
size, variants interleaved, thread-CPU seconds, one torch thread, the service's batch for that size.
Accuracy: at 28 px, each estimator's relative L2 distance to a NoiseTunnel reference with many more
copies (128, 32 steps each), per example image and noise seed: the app's, NoiseTunnel with every copy
all `steps` (the app before), and NoiseTunnel at the app's cost (each copy steps / 8 points of its own);
what two draws of NoiseTunnel differ by is the noise floor. Target (issue 10): IG + SmoothGrad at
112 px <= 8 s.

    python benchmarks/attributions.py [--size 112] [--steps 32] [--repeats 3] [--images 10]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
# isort: off
from common import interleaved_medians, print_table  # noqa: E402  (first: sets the process env before torch)
# isort: on

import torch  # noqa: E402
from captum.attr import IntegratedGradients, NoiseTunnel  # noqa: E402
from tqdm import tqdm  # noqa: E402

from lens.service import ServerLimits  # noqa: E402
from rvt.analysis import prepare  # noqa: E402
from rvt.budget import gradient_batch  # noqa: E402
from rvt.checkpoint import load_checkpoint  # noqa: E402
from rvt.device import thread_policy  # noqa: E402
from rvt.preprocess import read_image  # noqa: E402
from viz.__main__ import DEFAULT_CHECKPOINT  # noqa: E402
from viz.attributions import SMOOTH_COPIES, SMOOTH_STDEV, attribute, baseline_input, smooth_nodes  # noqa: E402
from viz.attributions import _shared_grid_smoothgrad as shared_grid  # noqa: E402

EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
BUDGET = ServerLimits().analysis_bytes  # the app's default per-pass budget (--memory-budget)


def noise_tunnel(model, x, target, baseline, steps, copies, batch, seed):
    """captum's SmoothGrad of IG: every noisy copy integrates all `steps` (the app's path before)."""
    torch.manual_seed(seed)
    with torch.enable_grad():
        return NoiseTunnel(IntegratedGradients(model)).attribute(
            x.clone().requires_grad_(True), baselines=baseline, target=target, n_steps=steps,
            internal_batch_size=batch, nt_type="smoothgrad", nt_samples=copies, stdevs=SMOOTH_STDEV,
            nt_samples_batch_size=1).detach()


def shared(model, x, target, baseline, steps, batch, seed):
    with torch.enable_grad():
        return shared_grid(model, x, target, baseline, steps, batch, seed=seed)


def timing(bundle, size: int, steps: int, repeats: int) -> None:
    x, _ = prepare(bundle, read_image(EXAMPLES[-1]), (size, size))
    model, target = bundle.model, 9
    batch = gradient_batch(bundle.config, (size, size), BUDGET)
    base = baseline_input(x, "black", bundle.preprocess)
    variants = {
        f"IG, {steps} steps (reference)": lambda: attribute(model, x, target, "Integrated Gradients", steps,
                                                            batch_size=batch, preprocess=bundle.preprocess),
        f"IG + SmoothGrad, {SMOOTH_COPIES} copies sharing {smooth_nodes(steps)} points (the app)":
            lambda: attribute(model, x, target, "Integrated Gradients", steps, noise_tunnel=True,
                              batch_size=batch, preprocess=bundle.preprocess),
        f"IG + SmoothGrad, NoiseTunnel {SMOOTH_COPIES} x {steps} (before)":
            lambda: noise_tunnel(model, x, target, base, steps, SMOOTH_COPIES, batch, 0),
    }
    medians = interleaved_medians(variants, repeats, warmup=0)
    first = next(iter(medians.values()))
    print(f"\n{size}x{size} px, batch {batch}, thread-CPU s, median of {repeats} interleaved\n")
    print_table(["variant", "s", "x IG alone"],
                [[name, f"{s:.2f}", f"{s / first:.2f}x"] for name, s in medians.items()])


def accuracy(bundle, steps: int, images: int, seeds: int = 3) -> None:
    model, pre = bundle.model, bundle.preprocess
    reference_copies, reference_steps = 128, 32
    errors = {"shared": [], "tunnel": [], "cheap": [], "floor": []}
    own = smooth_nodes(steps) // SMOOTH_COPIES  # NoiseTunnel's points per copy at the app's cost
    for path in tqdm(EXAMPLES[:images], desc="accuracy at 28 px"):
        x, _ = prepare(bundle, read_image(path), (28, 28))
        with torch.no_grad():
            target = int(model(x).argmax())
        base = baseline_input(x, "black", pre)
        truth = noise_tunnel(model, x, target, base, reference_steps, reference_copies, 256, seed=99)
        distance = lambda a, b: float((a - b).norm() / b.norm())  # noqa: E731
        for seed in range(seeds):
            errors["shared"].append(distance(shared(model, x, target, base, steps, 64, seed), truth))
            tunnel = noise_tunnel(model, x, target, base, steps, SMOOTH_COPIES, 64, seed)
            errors["tunnel"].append(distance(tunnel, truth))
            cheap = noise_tunnel(model, x, target, base, own, SMOOTH_COPIES, 64, seed)
            errors["cheap"].append(distance(cheap, truth))
            again = noise_tunnel(model, x, target, base, steps, SMOOTH_COPIES, 64, seed + seeds)
            errors["floor"].append(distance(again, tunnel))
    print(f"\n28x28 px, {images} example images x {seeds} seeds: relative L2 distance to NoiseTunnel "
          f"{reference_copies} x {reference_steps} (mean, max)\n")
    rows = [[f"the app: {SMOOTH_COPIES} copies sharing {smooth_nodes(steps)} points", smooth_nodes(steps),
             errors["shared"]],
            [f"NoiseTunnel {SMOOTH_COPIES} x {steps} (before)", SMOOTH_COPIES * steps, errors["tunnel"]],
            [f"NoiseTunnel {SMOOTH_COPIES} x {own} (the app's cost, own points)", SMOOTH_COPIES * own,
             errors["cheap"]],
            [f"two NoiseTunnel {SMOOTH_COPIES} x {steps} draws, from each other", "", errors["floor"]]]
    print_table(["estimator", "gradients", "distance"],
                [[name, n, f"{statistics.mean(e):.3f}, {max(e):.3f}"] for name, n, e in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--steps", type=int, default=32, help="the app's default")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=10, help="example images for the accuracy table")
    args = parser.parse_args()
    thread_policy(1)
    bundle = load_checkpoint(DEFAULT_CHECKPOINT, "cpu")
    print(f"torch {torch.__version__}, one thread; checkpoint {Path(DEFAULT_CHECKPOINT).name}")
    accuracy(bundle, args.steps, args.images)
    timing(bundle, args.size, args.steps, args.repeats)


if __name__ == "__main__":
    main()

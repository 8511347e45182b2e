"""Forward latency: vit-pytorch's RvT (the reference) vs ours in fp32, bf16 and under capture, and the
GEMM floor: the same matrix multiplies the forward performs, alone, in fp32.

Same weights, same inputs, one process, variants interleaved, thread-CPU clock with one torch
thread (`common`); on CUDA, wall clock with a synchronise. Prints median latencies and ratios to
the reference; the fp32 path is also given as a multiple of the GEMM floor.
Targets (issue 10, 224/16 batch 1, CPU): bf16 <= 0.55x of the reference; fp32 within 1.2x of the floor.
`python benchmarks/forward.py [--repeats N] [--device cuda] [--batches 1] [--compile]`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]
# isort: off
from common import interleaved_medians, print_table  # noqa: E402  (first: sets the process env before torch)
# isort: on
import torch  # noqa: E402

from reference import load_reference_rvt  # noqa: E402
from rvt import RvT, capture, pick_device  # noqa: E402
from rvt.device import thread_policy, with_precision  # noqa: E402

MODELS = {
    "224/16 (dim 384, depth 6, heads 6)": dict(image_size=224, patch_size=16, num_classes=1000, dim=384, depth=6,
                                               heads=6, dim_head=64, mlp_dim=1536, channels=3),
    "28/4 (dim 96, depth 6, heads 4)": dict(image_size=28, patch_size=4, num_classes=10, dim=96, depth=6,
                                            heads=4, dim_head=24, mlp_dim=192, channels=1),
}


def gemm_shapes(config: dict, batch: int) -> list[tuple[int, int, int, int]]:
    """(batch count, m, k, n) of every matrix multiply in one forward, attention's two included."""
    n = (config["image_size"] // config["patch_size"]) ** 2 + 1
    dim, heads, dh, mlp = config["dim"], config["heads"], config["dim_head"], config["mlp_dim"]
    inner = heads * dh
    shapes = [(1, batch * (n - 1), config["channels"] * config["patch_size"] ** 2, dim)]  # patch embedding
    for _ in range(config["depth"]):
        shapes += [(1, batch * (n - 1), dim, inner),  # pointwise part of the conv queries
                   (1, batch * n, dim, 2 * inner),  # keys and values
                   (batch * heads, n, dh, n),  # q k^T
                   (batch * heads, n, n, dh),  # attention x v
                   (1, batch * n, inner, dim),  # output projection
                   (1, batch * n, dim, 2 * mlp),  # GEGLU's doubled projection
                   (1, batch * n, mlp, dim)]
    return shapes


def gemm_floor(config: dict, batch: int, device: torch.device):
    """A callable running `gemm_shapes` on preallocated operands and outputs, and its FLOP count."""
    operands = [(torch.randn(b, m, k, device=device), torch.randn(b, k, n, device=device),
                 torch.empty(b, m, n, device=device)) for b, m, k, n in gemm_shapes(config, batch)]
    flops = sum(2 * b * m * k * n for b, m, k, n in gemm_shapes(config, batch))

    def run():
        for a, b, out in operands:
            torch.bmm(a, b, out=out)
    return run, flops


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    parser.add_argument("--compile", action="store_true", help="also time torch.compile of the bf16 model")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    device = pick_device(args.device)
    policy = thread_policy(args.threads)
    clock = time.perf_counter if device.type == "cuda" else time.thread_time
    reference = load_reference_rvt()
    rows = []
    for name, config in MODELS.items():
        torch.manual_seed(0)
        ref = reference.RvT(**config).to(device).eval()
        ours = RvT(**config).to(device).eval()
        ours.load_state_dict(ref.state_dict())
        bf16 = with_precision(ours, "bf16")
        compiled = with_precision(ours, "bf16", compile=True) if args.compile else None
        for batch in args.batches:
            x = torch.randn(batch, config["channels"], config["image_size"], config["image_size"], device=device)

            def run(model, captured=False, autocast=False, x=x):
                def call():
                    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                        if captured:
                            with capture(model):
                                model(x)
                        else:
                            model(x)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                return call

            floor, flops = gemm_floor(config, batch, device)
            variants = {"ref": run(ref), "fp32": run(ours), "capture": run(ours, True), "floor": floor,
                        "bf16": run(bf16), "autocast": run(ours, autocast=True)}
            if compiled is not None:
                variants["compiled bf16"] = run(compiled)
            t = interleaved_medians(variants, args.repeats, warmup=2, clock=clock)
            ratio = lambda key, t=t: f"{t[key] / t['ref']:.2f}x"  # noqa: E731
            rows.append([name, batch, f"{t['ref'] * 1e3:.1f}", f"{t['fp32'] * 1e3:.1f}", f"{t['floor'] * 1e3:.1f}",
                         f"{flops / t['floor'] / 1e9:.0f}", f"{t['fp32'] / t['floor']:.2f}x", ratio("fp32"),
                         ratio("bf16"), ratio("autocast"), ratio("capture"),
                         ratio("compiled bf16") if compiled is not None else "-"])
    print(f"device: {device}, torch {torch.__version__}, threads {policy['threads']} "
          f"(OMP_WAIT_POLICY={policy['omp_wait_policy']}), {'wall' if device.type == 'cuda' else 'thread-CPU'} "
          f"clock, median of {args.repeats} interleaved")
    print_table(["model", "batch", "reference ms", "fp32 ms", "GEMM floor ms", "floor GFLOP/s", "fp32/floor",
                 "fp32/ref", "bf16/ref", "autocast/ref", "capture/ref", "compiled bf16/ref"], rows)


if __name__ == "__main__":
    main()

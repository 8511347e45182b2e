"""python -m rvt.faithfulness --checkpoint PATH --count 200: the scorecard averaged over Fashion-MNIST test images.

Each image is scored for its predicted class. Prints two markdown tables: the scorecard (means; pass
rate of the randomisation check; medians for infidelity and sensitivity, whose scales vary a lot
between images) and the randomisation cascade (mean Spearman of |map| per stage).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_checkpoint
from ..data import DatasetError, load_fashion_mnist
from .methods import MapSettings
from .scorecard import RULE, FaithfulnessConfig, scorecard


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def aggregate(cards: list) -> dict:
    """Per method: means of the AUCs and Spearman values, pass rate, medians of infidelity and sensitivity."""
    first = cards[0]
    out = {}
    for method in first.methods:
        rows = [card.row(method) for card in cards]
        column = lambda key, rows=rows: np.array([r[key] for r in rows if r[key] is not None], dtype=float)  # noqa: E731
        entry = {"deletion_auc": column("deletion_auc").mean(), "insertion_auc": column("insertion_auc").mean(),
                 "randomization_spearman": column("randomization_spearman").mean(),
                 "randomization_mean_abs": column("randomization_mean_abs").mean(),
                 "pass_rate": column("passes_randomization").mean(),
                 "infidelity_median": float(np.median(column("infidelity"))),
                 "sensitivity_median": float(np.median(column("sensitivity"))) if column("sensitivity").size else None,
                 "randomization_curve": np.mean([c.randomization.spearman[method] for c in cards], axis=0).tolist()}
        for fill in first.curves:
            entry[f"deletion_auc_{fill}"] = float(np.mean([c.curves[fill].deletion_auc(method) for c in cards]))
            entry[f"insertion_auc_{fill}"] = float(np.mean([c.curves[fill].insertion_auc(method) for c in cards]))
        out[method] = {k: float(v) if isinstance(v, np.floating) else v for k, v in entry.items()}
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rvt.faithfulness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--count", type=int, default=200, help="how many test images (default 200)")
    p.add_argument("--start", type=int, default=0, help="index of the first test image")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx files")
    p.add_argument("--fills", nargs="+", default=["black"], help="deletion/insertion fills; the first is the table's")
    p.add_argument("--baseline", default="black", help="attribution baseline: black, blur, mean or noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the averages as JSON")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.count < 1 or args.start < 0:
        raise SystemExit("error: --count must be at least 1 and --start at least 0")
    try:
        bundle = load_checkpoint(args.checkpoint, args.device)
        images, _ = load_fashion_mnist("test", args.data_root)
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None
    images = images[args.start:args.start + args.count]
    config = FaithfulnessConfig(maps=MapSettings(baseline=args.baseline, seed=args.seed), fills=tuple(args.fills))
    try:
        cards = [scorecard(bundle.model, bundle.preprocess.normalize(image)[None].to(bundle.device), None,
                           bundle.preprocess, config) for image in tqdm(images, desc="scorecards", unit="image")]
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    result = aggregate(cards)
    fmt = lambda v: "—" if v is None else f"{v:.3f}"  # noqa: E731
    print(f"\n{len(cards)} test images from #{args.start}, predicted class; fill {args.fills[0]}, "
          f"attribution baseline {args.baseline}; thread CPU {np.mean([c.seconds for c in cards]):.2f} s per image\n")
    others = args.fills[1:]
    print(table(["method", "deletion AUC ↓", "insertion AUC ↑",
                 *[f"{kind} AUC ({fill})" for fill in others for kind in ("deletion", "insertion")],
                 "randomised ρ", "mean |ρ|", "passes", "infidelity (median) ↓", "sensitivity (median) ↓"],
                [[m, fmt(r["deletion_auc"]), fmt(r["insertion_auc"]),
                  *[fmt(r[f"{kind}_auc_{fill}"]) for fill in others for kind in ("deletion", "insertion")],
                  fmt(r["randomization_spearman"]), fmt(r["randomization_mean_abs"]), f"{r['pass_rate']:.0%}",
                  fmt(r["infidelity_median"]), fmt(r["sensitivity_median"])] for m, r in result.items()]))
    stages = cards[0].randomization.stages
    print("\nSpearman of |map| with the trained map, mean over images, as the cascade proceeds:\n")
    print(table(["method", *[f"+{s}" for s in stages]],
                [[m, *[f"{v:.2f}" for v in r["randomization_curve"]]] for m, r in result.items()]))
    print(f"\nA method {RULE}.")
    if args.json:
        args.json.write_text(json.dumps({"images": len(cards), "start": args.start, "stages": stages,
                                         "settings": cards[0].settings(), "methods": result}, indent=2))


if __name__ == "__main__":
    main()

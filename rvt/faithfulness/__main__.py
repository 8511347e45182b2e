"""python -m rvt.faithfulness --checkpoint PATH --count 200: the scorecard averaged over Fashion-MNIST test images.

Each image is scored for its predicted class. Shard a long run with --start/--count and --json, then
`--merge a.json b.json` prints the tables of them all. Prints two markdown tables: the scorecard (means; pass
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


def aggregate(records: list[dict]) -> dict:
    """Per-image `Scorecard.summary()`s -> per method: means of the AUCs and Spearman values, the pass rate,
    medians of infidelity and sensitivity, and the mean randomisation curve."""
    out = {}
    for method in records[0]:
        rows = [record[method] for record in records]
        column = lambda key, rows=rows: np.array([r[key] for r in rows if r[key] is not None], dtype=float)  # noqa: E731
        entry = {key: float(column(key).mean()) for key in rows[0] if key.endswith("_auc") or "_auc_" in key}
        entry.update(randomization_spearman=float(column("randomization_spearman").mean()),
                     randomization_mean_abs=float(column("randomization_mean_abs").mean()),
                     pass_rate=float(column("passes_randomization").mean()),
                     infidelity_median=float(np.median(column("infidelity"))),
                     sensitivity_median=float(np.median(column("sensitivity"))) if column("sensitivity").size else None,
                     randomization_curve=np.mean([r["randomization_curve"] for r in rows], axis=0).tolist())
        out[method] = entry
    return out


def report(records: list[dict], run: dict) -> str:
    """The two markdown tables and the rule, for `records` from a run described by `run`."""
    result = aggregate(records)
    fills, fmt = run["fills"], (lambda v: "—" if v is None else f"{v:.3f}")
    lines = [f"{len(records)} test images, predicted class; fill {fills[0]}, attribution baseline {run['baseline']}; "
             f"thread CPU {np.mean(run['seconds']):.2f} s per image", ""]
    lines.append(table(["method", "deletion AUC ↓", "insertion AUC ↑",
                        *[f"{kind} AUC ({fill})" for fill in fills[1:] for kind in ("deletion", "insertion")],
                        "randomised ρ", "mean |ρ|", "passes", "infidelity (median) ↓", "sensitivity (median) ↓"],
                       [[m, fmt(r["deletion_auc"]), fmt(r["insertion_auc"]),
                         *[fmt(r[f"{kind}_auc_{fill}"]) for fill in fills[1:] for kind in ("deletion", "insertion")],
                         fmt(r["randomization_spearman"]), fmt(r["randomization_mean_abs"]), f"{r['pass_rate']:.0%}",
                         fmt(r["infidelity_median"]), fmt(r["sensitivity_median"])] for m, r in result.items()]))
    lines += ["", "Spearman of |map| with the trained map, mean over images, as the cascade proceeds:", ""]
    lines.append(table(["method", *[f"+{s}" for s in run["stages"]]],
                       [[m, *[f"{v:.2f}" for v in r["randomization_curve"]]] for m, r in result.items()]))
    lines += ["", f"A method {RULE}."]
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m rvt.faithfulness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="the model to score (required unless --merge)")
    p.add_argument("--count", type=int, default=200, help="how many test images (default 200)")
    p.add_argument("--start", type=int, default=0, help="index of the first test image")
    p.add_argument("--data-root", help="folder with the Fashion-MNIST idx files")
    p.add_argument("--fills", nargs="+", default=["black"], help="deletion/insertion fills; the first is the table's")
    p.add_argument("--baseline", default="black", help="attribution baseline: black, blur, mean or noise")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="also write the averages as JSON")
    p.add_argument("--device", default="cpu")
    p.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="only print the tables of earlier --json runs")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge)
    if args.checkpoint is None:
        p.error("--checkpoint is required")
    if args.count < 1 or args.start < 0:
        raise SystemExit("error: --count must be at least 1 and --start at least 0")
    try:
        bundle = load_checkpoint(args.checkpoint, args.device)
        images, _ = load_fashion_mnist("test", args.data_root)
    except (CheckpointError, DatasetError) as e:
        raise SystemExit(f"error: {e}") from None
    images = images[args.start:args.start + args.count]
    config = FaithfulnessConfig(maps=MapSettings(baseline=args.baseline, seed=args.seed), fills=tuple(args.fills))
    records, seconds = [], []
    for image in tqdm(images, desc="scorecards", unit="image"):
        try:
            card = scorecard(bundle.model, bundle.preprocess.normalize(image)[None].to(bundle.device), None,
                             bundle.preprocess, config)
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
        records.append(card.summary())
        seconds.append(card.seconds)
        run = {"start": args.start, "fills": list(args.fills), "baseline": args.baseline,
               "stages": card.randomization.stages, "seconds": seconds, "settings": card.settings()}
        if args.json:  # after every image, so an interrupted run keeps what it did
            args.json.write_text(json.dumps({"run": run, "methods": aggregate(records), "images": records}))
    print("\n" + report(records, run))


def merge(paths: list[Path]) -> None:
    """Print the tables for several --json outputs of runs with the same settings (e.g. shards of a long run)."""
    parts = [json.loads(path.read_text()) for path in paths]
    runs = [part["run"] for part in parts]
    if any(r["fills"] != runs[0]["fills"] or r["baseline"] != runs[0]["baseline"] for r in runs):
        raise SystemExit("error: the runs to merge used different fills or baselines")
    run = {**runs[0], "seconds": [s for r in runs for s in r["seconds"]]}
    print(report([record for part in parts for record in part["images"]], run))


if __name__ == "__main__":
    main()

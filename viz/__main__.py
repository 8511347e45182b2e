"""python -m viz IMAGE [--checkpoint PATH] --out DIR: every panel as PNG, summary.json (with the faithfulness
scorecard), tensors.npz."""
from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from rvt.analysis import analyze
from rvt.checkpoint import CheckpointError, load_checkpoint
from rvt.preprocess import read_image

from .attributions import BASELINES
from .report import write_report

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "rvt_fashion_mnist.safetensors"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m viz", description=__doc__)
    p.add_argument("image", type=Path)
    p.add_argument("--checkpoint", type=Path, default=DEFAULT_CHECKPOINT)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--size", type=int, nargs=2, metavar=("H", "W"),
                   help="inference resolution (default: training size)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-attributions", action="store_true", help="skip the captum panels")
    p.add_argument("--no-faithfulness", action="store_true",
                   help="skip the faithfulness scorecard (summary.json's \"faithfulness\", faithfulness/*.png)")
    p.add_argument("--baseline", choices=BASELINES, default="black",
                   help="what the attributions start from / occlude with (default: black, the dataset's background)")
    args = p.parse_args(argv)
    try:
        bundle = load_checkpoint(args.checkpoint, args.device)
        analysis = analyze(bundle, read_image(args.image), tuple(args.size) if args.size else None)
    except (CheckpointError, OSError, ValueError) as e:  # ImageInputError is a ValueError
        raise SystemExit(f"error: {e}") from None
    with tqdm(total=100, desc="panels", unit="%") as bar:
        def progress(fraction, what):
            bar.set_postfix_str(what)
            bar.update(round(fraction * 100) - bar.n)
        files = write_report(analysis, bundle, args.out, attributions=not args.no_attributions,
                             faithfulness=not args.no_faithfulness, baseline=args.baseline, progress=progress)
    top, p_top = analysis.top(1)[0]
    print(f"{args.image.name}: {top} ({p_top:.1%}); wrote {len(files)} files to {args.out}")


if __name__ == "__main__":
    main()

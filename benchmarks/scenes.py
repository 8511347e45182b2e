"""Scene editor: what one edit costs server-side (target, issue 14: the prediction, attention and rollout
update within 300 ms p50 on this CPU).

An edit is the Scenes tab's own handler (`/scene_move`, found by api_name in the built page): render
the spec, one captured pass on the scene model, the attention maps and gradient rollout for the
predicted class scored against the masks, every picture. Each scene model is timed in turn, the
variants interleaved with one plain forward of the same scene as the reference, on the thread-CPU
clock with one torch thread (p50), and on the wall clock. `python benchmarks/scenes.py [--repeats 20]`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
# isort: off
from common import print_table  # noqa: E402  (first: sets the process env before torch)
# isort: on

import torch  # noqa: E402

from lens.service import LensService  # noqa: E402
from lens.tabs.scenes import MODELS, VIEWS, first_spec, render  # noqa: E402
from lens.ui import build_app  # noqa: E402
from rvt import load_checkpoint  # noqa: E402
from rvt.assets import BUNDLED_CHECKPOINT  # noqa: E402
from rvt.device import thread_policy  # noqa: E402
from rvt.scenes import SceneSpec  # noqa: E402


def handler(demo, api_name: str):
    return next(fn.fn for fn in demo.fns.values() if fn.api_name == api_name)


def time_edit(move, spec: dict, model: str, view: str, bundle, scene, repeats: int) -> dict[str, float]:
    """p50 seconds of a plain forward of `scene` (the reference) and of an edit, interleaved."""
    x = bundle.preprocess.normalize(torch.from_numpy(scene.image).permute(2, 0, 1)[None].float() / 255)
    red, blue = spec["red"], spec["blue"]
    step = iter(range(10**9))

    def forward():
        with torch.inference_mode():
            bundle.model(x)

    def edit():  # red nudged back and forth by half a unit: a new scene every call
        shift = 0.5 * (next(step) % 2)
        move(spec, red["x"] + shift, red["y"], blue["x"], blue["y"], model, view, "Gradient rollout", True)

    samples = {"forward": [], "edit": [], "edit wall": []}
    forward(), edit()
    for _ in range(repeats):
        start = time.thread_time()
        forward()
        samples["forward"].append(time.thread_time() - start)
        start, wall = time.thread_time(), time.perf_counter()
        edit()
        samples["edit"].append(time.thread_time() - start)
        samples["edit wall"].append(time.perf_counter() - wall)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    thread_policy(1)
    service = LensService(load_checkpoint(BUNDLED_CHECKPOINT, "cpu"))
    move = handler(build_app(service), "scene_move")
    spec = first_spec()
    rows = []
    for view in VIEWS:
        scene, _ = render(SceneSpec.from_dict(spec), view)
        for model in MODELS:
            p50 = time_edit(move, spec, model, view, service.scene_pool(model).bundle, scene, args.repeats)
            rows.append([view, model, f"{p50['forward'] * 1e3:.1f}", f"{p50['edit'] * 1e3:.1f}",
                         f"{p50['edit wall'] * 1e3:.1f}", f"{p50['edit'] / p50['forward']:.0f}x"])
    service.close()
    print(f"scene edit (/scene_move handler), p50 of {args.repeats}, torch threads {torch.get_num_threads()}; "
          "target <= 300 ms")
    print_table(["view", "model", "forward ms (reference)", "edit ms (thread CPU)", "edit ms (wall)",
                 "edit / forward"], rows)


if __name__ == "__main__":
    main()

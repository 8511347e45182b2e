"""End-to-end latency through gradio_client against a launched explorer (bundled model).

Full analysis = /predict (the one model pass) + /predict_panels + /predict_rollout, i.e. what an upload
triggers; head switch = /head (re-render from the session cache). Each is timed twice: through
gradio_client, and as plain HTTP calls to Gradio's /gradio_api/call/ routes in the same session (what a
browser or another HTTP client pays; gradio_client adds its own 50 ms polling sleeps). Prints p50/p95
and, as the in-process reference, the bare model forward on the same input.
`python benchmarks/app.py [--repeats N]`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks"), str(ROOT / "tests")]
import httpx  # noqa: E402
from app_server import serve  # noqa: E402
from common import print_table  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

CHECKPOINT = ROOT / "assets" / "rvt_fashion_mnist.safetensors"
EXAMPLE = ROOT / "assets" / "examples" / "9_ankle-boot.png"


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with serve(CHECKPOINT) as (url, bundle):
        client = Client(url, verbose=False)
        image = handle_file(str(EXAMPLE))
        h, w = bundle.preprocess.image_size
        depth, heads = bundle.config.depth, bundle.config.heads

        def analysis():
            client.predict(image, h, w, api_name="/predict")
            client.predict(depth - 1, 0, True, api_name="/predict_panels")
            client.predict("mean", 0.0, None, api_name="/predict_rollout")

        def head_switch(i=[0]):  # noqa: B006  (cycles through heads)
            i[0] += 1
            client.predict(depth - 1, i[0] % heads, api_name="/head")

        x = bundle.preprocess(Image.open(EXAMPLE))[None]

        def forward():
            with torch.inference_mode():
                bundle.model(x)

        http = httpx.Client(timeout=60)
        uploaded = http.post(f"{url}gradio_api/upload", files={"files": EXAMPLE.open("rb")}).json()[0]
        file_data = {"path": uploaded, "meta": {"_type": "gradio.FileData"}}

        def call(name, data):
            event = http.post(f"{url}gradio_api/call/{name}", json={"data": data, "session_hash": client.session_hash})
            with http.stream("GET", f"{url}gradio_api/call/{name}/{event.json()['event_id']}") as stream:
                reply = "".join(stream.iter_text())
            if "event: complete" not in reply:
                raise RuntimeError(f"/{name} failed: {reply[:300]}")

        def http_analysis():
            call("predict", [file_data, h, w])
            call("predict_panels", [depth - 1, 0, True])
            call("predict_rollout", ["mean", 0.0, None])

        def http_head_switch(i=[0]):  # noqa: B006
            i[0] += 1
            call("head", [depth - 1, i[0] % heads])

        rows = []
        for name, fn in (("model forward (reference)", forward), ("full analysis, gradio_client", analysis),
                         ("head switch, gradio_client", head_switch), ("full analysis, HTTP", http_analysis),
                         ("head switch, HTTP", http_head_switch)):
            fn()  # warm-up
            samples = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - start)
            rows.append((name, *percentiles(samples)))
    reference = rows[0][1]
    print(f"{CHECKPOINT.name}, {args.repeats} repeats, torch threads {torch.get_num_threads()}")
    print_table(["request", "p50 ms", "p95 ms", "p50 x forward"],
                [[n, f"{p50 * 1e3:.1f}", f"{p95 * 1e3:.1f}", f"{p50 / reference:.1f}x"] for n, p50, p95 in rows])


if __name__ == "__main__":
    main()

"""End-to-end latency of the explorer, and whether one visitor's heavy job makes another wait.

Serves `python app.py` (bundled model) in a subprocess on 127.0.0.1 (`soak.Server`) and prints:

1. latency: full analysis (/predict + /predict_panels, what an upload triggers) and head switch
   (/head, a re-render from the session's cache), p50/p95, through gradio_client and as plain HTTP
   calls to /gradio_api/call/<api_name> (what a browser pays; gradio_client adds its own 50 ms
   polling sleeps), and opening the Head statistics and Rotary tabs (/stats, /rotary) over plain HTTP
   (issue 10's target: <= 60 ms p50), against the bare model forward in this process (the server's
   thread policy).
2. isolation (issue 8, point 5): p95 of session A's /predict at 28 px idle (before and after) and
   while session B runs Integrated Gradients + SmoothGrad (128 steps) at 168 px (at 112 px it no
   longer outlasts A's requests). Target: within 2x.
3. cancel (issue 11): B's 128-step SmoothGrad job stopped three ways (the Cancel button's endpoint
   in B's own session, gradio_client's Job.cancel(), closing the connection) and the time until
   the job is gone, seen as B's next attribution being accepted (a session runs one job at a time);
   after a disconnect, which leaves no client to ask, as the server's CPU use falling idle.
   Target: 2 s. A job nothing stops ends at the server's --job-timeout (set here, default 60 s).

Wall clock on a shared host: run it on a quiet machine for figures to quote.
`python benchmarks/app.py [--repeats 30 --attr-size 168 --steps 128]`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
from common import print_table  # noqa: E402, I001  (first: process settings before torch loads)

import httpx  # noqa: E402
import torch  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402
from soak import EXAMPLE, CallError, HttpSession, Server, api_data, percentiles  # noqa: E402

from rvt import load_checkpoint  # noqa: E402
from rvt.assets import BUNDLED_CHECKPOINT  # noqa: E402
from rvt.device import thread_policy  # noqa: E402
from rvt.preprocess import read_image  # noqa: E402

BUSY = "another job of yours"  # the refusal while a session's heavy job runs


def samples(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def ms(values: tuple[float, ...]) -> list[str]:
    return [f"{v * 1e3:.0f}" for v in values]


def latency(server: Server, repeats: int) -> None:
    bundle = load_checkpoint(BUNDLED_CHECKPOINT, "cpu")
    x = bundle.preprocess(read_image(EXAMPLE))[None]
    h, w = bundle.preprocess.image_size
    depth, heads = bundle.config.depth, bundle.config.heads
    panels = api_data(server.url, "predict_panels", {})
    client, http = Client(server.url, verbose=False), HttpSession(server.url)
    image, uploaded = handle_file(str(EXAMPLE)), http.upload(EXAMPLE)
    turn = iter(range(10**9))

    def forward():
        with torch.inference_mode():
            bundle.model(x)

    def client_analysis():
        client.predict(path=image, height=h, width=w, api_name="/predict")
        client.predict(*panels, api_name="/predict_panels")

    def http_analysis():
        http.call("predict", path=uploaded, height=h, width=w)
        http.call("predict_panels")

    variants = {"model forward in this process (reference)": forward,
                "full analysis, gradio_client": client_analysis,
                "head switch, gradio_client": lambda: client.predict(layer=depth - 1, head=next(turn) % heads,
                                                                     shared_scale=True, api_name="/head"),
                "full analysis, HTTP": http_analysis,
                "head switch, HTTP": lambda: http.call("head", layer=depth - 1, head=next(turn) % heads),
                "Head statistics tab opened, HTTP": lambda: http.call("stats"),
                "Rotary tab opened, HTTP": lambda: http.call("rotary")}
    rows = [(name, *percentiles(samples(fn, repeats))) for name, fn in variants.items()]
    reference = rows[0][1]
    print(f"\nlatency, {repeats} repeats, bundled model at {h}x{w} px ({torch.get_num_threads()} torch thread(s) here)")
    print_table(["request", "p50 ms", "p95 ms", "p50 / forward"],
                [[n, *ms((p50, p95)), f"{p50 / reference:.0f}x"] for n, p50, p95 in rows])
    client.close()
    http.close()


def wait_until_free(session: Callable[[], None], deadline: float) -> float | None:
    """Seconds (perf_counter) at which a probe attribution of the session was accepted; None if never."""
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        try:
            session()
            return start
        except (AppError, CallError, NoAnswer) as e:
            if BUSY not in str(e).lower():
                raise
        time.sleep(0.1)
    return None


def wait_until_idle(server: Server, deadline: float, window: float = 0.25) -> float | None:
    """Seconds (perf_counter) at which the server stopped computing: its CPU use over `window` fell under
    10% of a core. A session whose client went away cannot ask for anything, so this is how its job's end
    is seen from outside."""
    while time.perf_counter() < deadline:
        start, used = time.perf_counter(), server.cpu_seconds()
        time.sleep(window)
        if server.cpu_seconds() - used < 0.1 * window:
            return start
    return None


def job_running(attribution: Callable[[], None]) -> bool:
    """Whether the session's heavy job still runs: a probe attribution is refused (else it runs the probe)."""
    try:
        attribution()
        return False
    except (AppError, CallError, NoAnswer) as e:
        if BUSY not in str(e).lower():
            raise
        return True


def start_heavy(url: str, size: int, steps: int) -> tuple[Client, object]:
    """Session B: an analysis at size x size px, then IG + SmoothGrad with `steps` steps, left running."""
    b = Client(url, verbose=False)
    b.predict(path=handle_file(str(EXAMPLE)), height=size, width=size, api_name="/predict")
    job = b.submit(method="Integrated Gradients", steps=steps, smooth=True, target=None, api_name="/attribution")
    return b, job


class NoAnswer(Exception):
    """A probe got no answer in time: counted as the session still being busy."""


def probe(client: Client, timeout: float = 20.0) -> Callable[[], None]:
    def run():
        job = client.submit(method="Saliency", steps=4, smooth=False, target=None, api_name="/attribution")
        try:
            job.result(timeout=timeout)
        except TimeoutError:
            raise NoAnswer(f"{BUSY}: no answer in {timeout:g} s") from None
    return run


def isolation_and_cancel(server: Server, args) -> None:
    a, a_client = HttpSession(server.url), Client(server.url, verbose=False)
    uploaded, image = a.upload(EXAMPLE), handle_file(str(EXAMPLE))
    predict = lambda: a.call("predict", path=uploaded, height=28, width=28)  # noqa: E731
    client_predict = lambda: a_client.predict(path=image, height=28, width=28, api_name="/predict")  # noqa: E731
    half = max(1, args.repeats // 2)
    idle, idle_client = samples(predict, half), samples(client_predict, half)

    server.reset_peak()
    b, job = start_heavy(server.url, args.attr_size, args.steps)
    time.sleep(2.0)  # the job has started its first batch
    busy, busy_client = samples(predict, args.repeats, 0), samples(client_predict, half, 0)
    still_running = not job.done()

    # cancel 1: the Cancel button's endpoint, in B's own session
    start = time.perf_counter()
    b.predict(api_name="/cancel_attribution")
    ended = None
    while ended is None and time.perf_counter() < start + args.job_timeout + 30:
        if job.done():
            ended = time.perf_counter()
        time.sleep(0.02)
    try:
        job.result()
        outcome = "completed"
    except Exception as e:  # noqa: BLE001 - the message is the outcome
        outcome = str(e)[:40]
    freed = wait_until_free(probe(b), start + args.job_timeout + 30)
    peak = server.peak_mb()
    idle += samples(predict, half, 0)
    idle_client += samples(client_predict, half, 0)
    idle_p, busy_p = percentiles(idle), percentiles(busy)
    idle_c, busy_c = percentiles(idle_client), percentiles(busy_client)
    print(f"\nisolation: session A's /predict at 28 px; busy = session B runs IG + SmoothGrad, {args.steps} steps, "
          f"at {args.attr_size}x{args.attr_size} px (still running after A's requests: {still_running}); "
          f"server peak RSS during B's job {peak:.0f} MB")
    print_table(["A's /predict", "idle p50 ms", "idle p95 ms", "busy p50 ms", "busy p95 ms", "p95 busy / idle",
                 "target"],
                [["HTTP", *ms(idle_p), *ms(busy_p), f"{busy_p[1] / idle_p[1]:.2f}x", "<= 2x"],
                 ["gradio_client", *ms(idle_c), *ms(busy_c), f"{busy_c[1] / idle_c[1]:.2f}x", "<= 2x"]])

    cancels = [("Cancel endpoint (/cancel_attribution, same session)", start, ended, freed, f"job ended: {outcome}")]
    # cancel 2: gradio_client's Job.cancel() (Gradio's /cancel route, what the browser's cancel also sends)
    b2, job2 = start_heavy(server.url, args.attr_size, args.steps)
    time.sleep(3.0)
    running = job_running(probe(b2))
    start = time.perf_counter()
    job2.cancel()
    freed = start if not running else wait_until_free(probe(b2), start + args.job_timeout + 30)
    note = f"running at cancel: {running}; job.status(): {job2.status().code.name}"
    cancels.append(("gradio_client Job.cancel()", start, None, freed, note))
    # cancel 3: the client goes away: its result stream is closed
    c = HttpSession(server.url, timeout=args.job_timeout + 30)  # a probe that gets no answer fails, not hangs
    c.call("predict", path=c.upload(EXAMPLE), height=args.attr_size, width=args.attr_size)
    event = c.submit("attribution", method="Integrated Gradients", steps=args.steps, smooth=True)
    listened = time.perf_counter() + 3.0  # the client reads its progress events for 3 s, then goes away
    with contextlib.suppress(httpx.ReadTimeout), httpx.Client(timeout=httpx.Timeout(60, read=3.0)) as reader, \
            reader.stream("GET", f"{server.url}gradio_api/call/attribution/{event}") as stream:
        for _ in stream.iter_text():
            if time.perf_counter() > listened:
                break
    start = time.perf_counter()  # the connection is closed here
    freed = wait_until_idle(server, start + args.job_timeout + 30)
    cancels.append(("disconnect (result stream closed)", start, None, freed,
                    "gone = the server's CPU use falls under 10% of a core (nothing else runs)"))

    print(f"\ncancel: B's {args.steps}-step SmoothGrad job at {args.attr_size} px; time until it is gone "
          f"(B's next attribution accepted); server --job-timeout {args.job_timeout:g} s")
    print_table(["how", "job gone after s", "result reached the client after s", "note", "target"],
                [[how, "never" if freed is None else f"{freed - start:.1f}",
                  "" if ended is None else f"{ended - start:.2f}", note, "<= 2 s"]
                 for how, start, ended, freed, note in cancels])
    for client in (a_client, b, b2):
        client.close()
    a.close()
    c.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--attr-size", type=int, default=168, help="B's inference side in px for its attribution")
    parser.add_argument("--steps", type=int, default=128, help="B's IG steps (SmoothGrad on)")
    parser.add_argument("--job-timeout", type=float, default=60.0, help="the server's --job-timeout (bounds a run)")
    parser.add_argument("--parts", default="latency,isolation", help="comma-separated subset")
    args = parser.parse_args()
    policy = thread_policy()
    print(f"host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {policy}")
    with Server("--job-timeout", str(args.job_timeout)) as server:
        if "latency" in args.parts:
            latency(server, args.repeats)
        if "isolation" in args.parts:
            isolation_and_cancel(server, args)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; server log {server.log}")


if __name__ == "__main__":
    sys.exit(main())

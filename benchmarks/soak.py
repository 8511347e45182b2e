"""Bounded load and soak of the explorer: memory, disk and latency while visitors come, go and misbehave.

Starts `python app.py` in a subprocess on 127.0.0.1 (bundled model, its own GRADIO_TEMP_DIR and TMPDIR
in a fresh temp folder, so every figure is that server's own: RSS from /proc/<pid>/status), talks to it
over plain HTTP (Gradio's /gradio_api/call/<api_name> routes; one `session_hash` = one visitor) and
prints each figure beside the target of issue 11:

  sessions  N new visitors at 28 px: RSS at start, after them, and after their TTL  (within 50 MB of start)
  largest   M requests at the largest size the server allows, new visitor each    (peak RSS under 2 GB)
  flood     one client floods /attribution while another's /predict is timed      (victim p95 under 1 s)
  disk      Gradio cache and export folder: start, after exports, after expiry    (back to start)

Every phase has a bounded count and a time limit; the server is stopped at the end (SIGINT, as Ctrl-C)
and what it left on disk is reported. `python benchmarks/soak.py [--sessions 300 --big 20 ...]`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from common import PROCESS_ENV, print_table  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from PIL import Image  # noqa: E402

from lens.service import LensService, ServerLimits, UserError  # noqa: E402
from rvt import load_checkpoint  # noqa: E402
from rvt.assets import BUNDLED_CHECKPOINT, EXAMPLES  # noqa: E402
from rvt.budget import parse_bytes  # noqa: E402

EXAMPLE = sorted(EXAMPLES.glob("*.png"))[-1]  # an ankle boot
MB = 2**20


def percentiles(samples: list[float]) -> tuple[float, float]:
    """(median, nearest-rank 95th percentile)."""
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def tree_size(path: Path) -> tuple[int, int]:
    """(bytes, files) under `path`; 0, 0 if it does not exist. Files and folders the server's janitor
    removes during the walk are skipped (os.walk ignores folders that vanish)."""
    size = count = 0
    for root, _, names in os.walk(path):
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                size += os.stat(os.path.join(root, name)).st_size
                count += 1
    return size, count


def back_to_start(start: tuple[int, int], end: tuple[int, int]) -> bool:
    """Whether a folder's (bytes, files) is back to where it started. Both readings follow one visit
    (the warm-up, then the visit after expiry), whose upload is a generated image of varying size:
    so no more files than at the start, and at most a few KB more."""
    return end[1] <= start[1] and end[0] <= start[0] + 16 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`python app.py` on a free loopback port with its own temp folders; its RSS and disk are read from outside."""

    def __init__(self, *flags: str, log: Path | None = None):
        self.flags, self.root = flags, Path(tempfile.mkdtemp(prefix="rvt-soak-"))
        self.cache = self.root / "gradio"  # GRADIO_TEMP_DIR: uploads and every file a response returns
        self.tmp = self.root / "tmp"  # TMPDIR: the service's export folder is made here
        self.log = log or self.root / "server.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/"

    def __enter__(self) -> Server:
        self.tmp.mkdir(parents=True)
        env = {k: v for k, v in os.environ.items() if k not in PROCESS_ENV}  # the benchmarks' settings stay here
        env.update(GRADIO_TEMP_DIR=str(self.cache), TMPDIR=str(self.tmp), GRADIO_ANALYTICS_ENABLED="False",
                   PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1",
                                      "--port", str(self.port), *self.flags], cwd=ROOT, env=env,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: see {self.log}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url, timeout=5).status_code == 200:
                    return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the server did not answer within 180 s: see {self.log}")

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self, sig: int = signal.SIGINT) -> None:
        """Stop as Ctrl-C does (Gradio closes and atexit handlers run); kill after 30 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _status(self, key: str) -> float:
        with open(f"/proc/{self.proc.pid}/status") as status:
            return next(int(line.split()[1]) / 1024 for line in status if line.startswith(key))

    def rss_mb(self) -> float:
        return self._status("VmRSS:")

    def reset_peak(self) -> None:
        with open(f"/proc/{self.proc.pid}/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS

    def peak_mb(self) -> float:
        return self._status("VmHWM:")

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

    def disk(self) -> dict[str, tuple[int, int]]:
        """(bytes, files) of the Gradio cache and of the service's export folder(s)."""
        exports = [tree_size(p) for p in self.tmp.glob("rvt-lens-exports-*")]
        return {"gradio cache": tree_size(self.cache),
                "exports": (sum(b for b, _ in exports), sum(f for _, f in exports)),
                "all temp": tree_size(self.root / "tmp")}


class CallError(RuntimeError):
    """A request the server answered with an error event (the message the visitor sees) or an HTTP error."""


_ENDPOINTS: dict[str, dict] = {}  # server url -> its named endpoints (GET /gradio_api/info)


def api_data(url: str, name: str, kwargs: dict) -> list:
    """The positional `data` of /call/<name> from keyword arguments, the rest at the endpoint's defaults."""
    if url not in _ENDPOINTS:
        _ENDPOINTS[url] = httpx.get(f"{url}gradio_api/info", timeout=60).json()["named_endpoints"]
    params = [p["parameter_name"] for p in _ENDPOINTS[url][f"/{name}"]["parameters"]]
    if unknown := set(kwargs) - set(params):
        raise TypeError(f"/{name} has no parameter {', '.join(unknown)}; it takes {params}")
    defaults = {p["parameter_name"]: p.get("parameter_default") for p in _ENDPOINTS[url][f"/{name}"]["parameters"]}
    return [kwargs.get(p, defaults[p]) for p in params]


class HttpSession:
    """One visitor over plain HTTP: its own session_hash on Gradio's /gradio_api/call/<api_name> routes.

    The result stream of /call/ is per session, so one HttpSession runs one event at a time."""

    def __init__(self, url: str, timeout: float = 600):
        self.url, self.hash = url, uuid.uuid4().hex
        self.http = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def upload(self, path: Path) -> dict:
        with path.open("rb") as f:
            reply = self.http.post(f"{self.url}gradio_api/upload", files={"files": f})
        reply.raise_for_status()
        return {"path": reply.json()[0], "meta": {"_type": "gradio.FileData"}}

    def submit(self, name: str, **kwargs) -> str:
        body = {"data": api_data(self.url, name, kwargs), "session_hash": self.hash}
        reply = self.http.post(f"{self.url}gradio_api/call/{name}", json=body)
        if reply.status_code != 200:
            raise CallError(f"HTTP {reply.status_code}: {reply.text[:200]}")
        return reply.json()["event_id"]

    def result(self, name: str, event_id: str) -> str:
        """The stream's last event: returns the data of `complete`, raises CallError with that of `error`."""
        with self.http.stream("GET", f"{self.url}gradio_api/call/{name}/{event_id}") as stream:
            reply = "".join(stream.iter_text())
        events = [block for block in reply.split("\n\n") if block.startswith("event: complete")
                  or block.startswith("event: error")]
        if not events:
            raise CallError(f"/{name}: no result in {reply[:200]!r}")
        kind, _, data = events[-1].partition("\ndata: ")
        if kind == "event: error":
            raise CallError(data)
        return data

    def call(self, name: str, **kwargs) -> str:
        return self.result(name, self.submit(name, **kwargs))

    def timed(self, name: str, **kwargs) -> float:
        start = time.perf_counter()
        self.call(name, **kwargs)
        return time.perf_counter() - start


def largest_side(limits: ServerLimits) -> int:
    """The largest square inference side the server accepts for the bundled model."""
    service = LensService(load_checkpoint(BUNDLED_CHECKPOINT, "cpu"), limits)
    try:
        lo, hi, step = service.size_range(service.bundled.bundle)
        for side in range(hi, lo - 1, -step):
            with contextlib.suppress(UserError):
                return service.check_size(service.bundled.bundle, (side, side))[0]
        raise RuntimeError("no size is allowed")
    finally:
        service.close()


class Uploads:
    """A different image per visitor (the example with a seeded +-1 noise), so Gradio's cache, which stores
    files by content hash, sees each visitor's upload and panels as new files, as it would for real visitors."""

    def __init__(self):
        self.root = Path(tempfile.mkdtemp(prefix="rvt-soak-uploads-"))
        self.pixels = np.asarray(Image.open(EXAMPLE), dtype=np.int16)
        self.count = 0
        self.lock = threading.Lock()

    def __call__(self) -> Path:
        with self.lock:
            self.count += 1
            i = self.count
        noise = np.random.default_rng(i).integers(-1, 2, self.pixels.shape)
        path = self.root / f"visitor-{i}.png"
        Image.fromarray(np.clip(self.pixels + noise, 0, 255).astype(np.uint8)).save(path)
        return path

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


UPLOADS = Uploads()


def visit(url: str, size: int, then: str | None = "predict_panels") -> None:
    """A new visitor: upload, the analysis, then (by default, as the page does) every panel drawn from it."""
    visitor = HttpSession(url)
    try:
        visitor.call("predict", path=visitor.upload(UPLOADS()), height=size, width=size)
        if then:
            visitor.call(then)
    finally:
        visitor.close()


def fmt_disk(d: tuple[int, int]) -> str:
    return f"{d[0] / MB:.2f} MB, {d[1]} files"


def server_flags(args, ttl: float) -> tuple[str, ...]:
    return ("--session-ttl", str(ttl), "--max-side", str(args.max_side), "--memory-budget", str(args.memory_budget),
            "--total-memory", str(args.total_memory), "--job-timeout", str(args.job_timeout))


class RssGuard:
    """Samples the server's RSS; kills the server if it passes `limit_mb` (this host is shared)."""

    def __init__(self, server: Server, limit_mb: float):
        self.server, self.limit, self.killed = server, limit_mb, False
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self.done.wait(0.2):
            with contextlib.suppress(OSError, StopIteration):
                if self.server.rss_mb() > self.limit:
                    self.killed = True
                    self.server.proc.kill()
                    return

    def __enter__(self) -> RssGuard:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def wait_for_expiry(ttl: float) -> None:
    """Sleep past the TTL and then one round of the server's janitor (every half TTL, at least 1 s),
    which frees expired sessions, their exports and Gradio's cached files."""
    time.sleep(ttl + max(1.0, ttl / 2) + 1)


def phase_sessions(args, rows: list) -> None:
    with Server(*server_flags(args, args.ttl)) as server:
        visit(server.url, 28)  # warm-up: lazy imports, allocator pools, one cached upload
        start, disk0 = server.rss_mb(), server.disk()
        t = time.perf_counter()
        with ThreadPoolExecutor(args.clients) as pool:
            futures = [pool.submit(visit, server.url, 28) for _ in range(args.sessions)]
            errors = sum(f.exception() is not None for f in futures)
        elapsed = time.perf_counter() - t
        after, disk1 = server.rss_mb(), server.disk()
        wait_for_expiry(args.ttl)
        visit(server.url, 28, None)
        expired, disk2 = server.rss_mb(), server.disk()
    rows += [[f"sessions: {args.sessions} new visitors at 28 px, /predict + /predict_panels ({args.clients} "
              f"clients, {elapsed:.0f} s, {errors} errors, TTL {args.ttl:g} s): RSS start / after / after TTL",
              f"{start:.0f} / {after:.0f} / {expired:.0f} MB ({expired - start:+.0f} MB)",
              "within 50 MB of start", "yes" if expired - start <= 50 else "NO"],
             ["sessions: Gradio cache start / after / after TTL",
              f"{fmt_disk(disk0['gradio cache'])} / {fmt_disk(disk1['gradio cache'])} / "
              f"{fmt_disk(disk2['gradio cache'])}", "back to start",
              "yes" if back_to_start(disk0["gradio cache"], disk2["gradio cache"]) else "NO"]]


def phase_largest(args, rows: list) -> None:
    side = largest_side(ServerLimits(max_side=args.max_side, analysis_bytes=args.memory_budget,
                                     total_bytes=args.total_memory))
    with Server(*server_flags(args, ServerLimits().session_ttl)) as server:
        visit(server.url, 28, None)
        start = server.rss_mb()
        server.reset_peak()
        t = time.perf_counter()
        with RssGuard(server, args.rss_abort_mb) as guard, ThreadPoolExecutor(2) as pool:
            futures = [pool.submit(visit, server.url, side, "head") for _ in range(args.big)]  # the cheapest render
            errors = Counter(str(f.exception())[:90] for f in futures if f.exception() is not None)
        elapsed = time.perf_counter() - t
        peak, end = (float("nan"),) * 2 if guard.killed else (server.peak_mb(), server.rss_mb())
    killed = f"; server KILLED at {args.rss_abort_mb} MB RSS" if guard.killed else ""
    seen = "".join(f"; {n} x {message}" for message, n in errors.items())
    rows.append([f"largest: {args.big} x /predict + /head at {side}x{side} px, a new visitor each, default TTL "
                 f"({elapsed:.0f} s, {sum(errors.values())} errors{seen}{killed}): "
                 f"RSS start / peak / end", f"{start:.0f} / {peak:.0f} / {end:.0f} MB",
                 "under 2048 MB: peak / end",
                 f"{'yes' if peak < 2048 else 'NO'} / {'yes' if end < 2048 else 'NO'}"])


def flood(server: Server, args, fresh_sessions: bool) -> tuple[Counter, list[float], int]:
    """Fires `--flood` IG + SmoothGrad requests at once (from one session or one session each) while a
    victim times /predict over plain HTTP; then cancels the flood's jobs until they are gone (bounded).

    The flood goes through gradio_client: Gradio's /call/ result streams are per session, so concurrent
    events of one session need the client's demultiplexing by event id."""
    image = handle_file(str(EXAMPLE))
    clients = [Client(server.url, verbose=False) for _ in range(args.flood if fresh_sessions else 1)]
    for client in clients:
        client.predict(path=image, height=28, width=28, api_name="/predict")
    victim = HttpSession(server.url)
    victim_image = victim.upload(EXAMPLE)
    victim.call("predict", path=victim_image, height=28, width=28)
    heavy = dict(method="Integrated Gradients", steps=args.flood_steps, smooth=True, target=None)
    jobs = [clients[i % len(clients)].submit(**heavy, api_name="/attribution") for i in range(args.flood)]
    time.sleep(1.0)  # the flood is queued and running
    times, victim_errors = [], 0
    deadline = time.monotonic() + args.flood_seconds
    while len(times) + victim_errors < args.requests and time.monotonic() < deadline:
        try:
            times.append(victim.timed("predict", path=victim_image, height=28, width=28))
        except CallError:
            victim_errors += 1
    outcomes = Counter({"(running or queued when the victim finished)": sum(not j.done() for j in jobs)})
    deadline = time.monotonic() + 120
    while not all(j.done() for j in jobs) and time.monotonic() < deadline:
        for client in clients:  # a queued job starts later: cancel again until none is left
            with contextlib.suppress(Exception):
                client.predict(api_name="/cancel_attribution")
        time.sleep(0.5)
    for job in jobs:
        if not job.done():
            outcomes["(still running 120 s after cancelling)"] += 1
            continue
        try:
            job.result()
            outcomes["completed"] += 1
        except Exception as e:  # noqa: BLE001 - every outcome is counted by its message
            text = str(e)
            outcomes["refused: another job of yours" if "Another job of yours" in text else
                     "cancelled" if "Cancelled" in text else text[:70]] += 1
    for client in clients:
        client.close()
    victim.close()
    return outcomes, times, victim_errors


def phase_flood(args, rows: list) -> None:
    for fresh, who in ((False, "one session"), (True, "a new session per request")):
        with Server(*server_flags(args, ServerLimits().session_ttl)) as server:
            outcomes, times, errors = flood(server, args, fresh)
        p50, p95 = percentiles(times) if times else (float("nan"),) * 2
        seen = ", ".join(f"{k}: {v}" for k, v in outcomes.items() if v)
        rows.append([f"flood ({who}): {args.flood} x /attribution IG {args.flood_steps} steps + SmoothGrad at "
                     f"28 px [{seen}]; victim /predict 28 px x {len(times)}, {errors} errors: p50 / p95",
                     f"{p50 * 1e3:.0f} / {p95 * 1e3:.0f} ms", "p95 under 1000 ms, 0 errors",
                     "yes" if p95 < 1.0 and not errors else "NO"])


def phase_disk(args, rows: list) -> None:
    with Server(*server_flags(args, args.ttl)) as server:
        visit(server.url, 28, None)
        disk0 = server.disk()
        visitors = [HttpSession(server.url) for _ in range(args.exports)]
        for visitor in visitors:
            visitor.call("predict", path=visitor.upload(UPLOADS()), height=28, width=28)
            visitor.call("export")
        disk1 = server.disk()
        wait_for_expiry(args.ttl)
        visit(server.url, 28, None)
        disk2 = server.disk()
        for visitor in visitors:
            visitor.close()
    left = {name: tree_size(path) for name, path in (("gradio cache", server.cache), ("all temp", server.tmp))}
    for name in ("exports", "gradio cache"):
        rows.append([f"disk: {name} start / after {args.exports} exports at 28 px / after their TTL",
                     f"{fmt_disk(disk0[name])} / {fmt_disk(disk1[name])} / {fmt_disk(disk2[name])}",
                     "back to start", "yes" if back_to_start(disk0[name], disk2[name]) else "NO"])
    names = sorted(str(p.relative_to(server.root)) for p in server.root.rglob("*") if p.is_file()
                   and p.parent != server.root)  # the server's log lies in the root itself
    rows.append([f"disk: left after shutdown (SIGINT), Gradio cache / TMPDIR with the exports "
                 f"(e.g. {', '.join(names[:3]) or 'none'})",
                 f"{fmt_disk(left['gradio cache'])} / {fmt_disk(left['all temp'])}", "nothing",
                 "yes" if not left["gradio cache"][1] and not left["all temp"][1] else "NO"])


PHASES = {"sessions": phase_sessions, "largest": phase_largest, "flood": phase_flood, "disk": phase_disk}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = ServerLimits()
    p.add_argument("--phases", default=",".join(PHASES), help="comma-separated subset, run in this order")
    p.add_argument("--sessions", type=int, default=300, help="new visitors in the sessions phase")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients in the sessions phase")
    p.add_argument("--big", type=int, default=20, help="requests at the largest allowed size")
    p.add_argument("--flood", type=int, default=40, help="attribution requests the flooding client sends at once")
    p.add_argument("--flood-steps", type=int, default=128, help="IG steps of each flood request (SmoothGrad on)")
    p.add_argument("--requests", type=int, default=30, help="victim /predict requests timed during the flood")
    p.add_argument("--flood-seconds", type=float, default=120, help="time limit of the victim's requests")
    p.add_argument("--exports", type=int, default=5, help="visitors who each export once in the disk phase")
    p.add_argument("--ttl", type=float, default=5.0, help="--session-ttl (s) of the sessions and disk phases")
    p.add_argument("--rss-abort-mb", type=float, default=8192, help="kill the server past this RSS (shared host)")
    p.add_argument("--max-side", type=int, default=defaults.max_side)
    p.add_argument("--memory-budget", type=parse_bytes, default=defaults.analysis_bytes, help="app.py's flag")
    p.add_argument("--total-memory", type=parse_bytes, default=defaults.total_bytes, help="app.py's flag")
    p.add_argument("--job-timeout", type=float, default=defaults.job_timeout)
    args = p.parse_args()
    rows: list = []
    print(f"host load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared: figures are noisy)",
          flush=True)
    for name in args.phases.split(","):
        t = time.perf_counter()
        PHASES[name](args, rows)
        print(f"  {name}: {time.perf_counter() - t:.0f} s, load average {os.getloadavg()[0]:.1f}", flush=True)
    UPLOADS.close()
    print_table(["figure", "measured", "target", "met"], rows)


if __name__ == "__main__":
    main()

"""RvT Lens: what is this rotary Vision Transformer looking at, and what does its rotary embedding do?

`python app.py` serves the explorer on 127.0.0.1:7860 with the bundled Fashion-MNIST checkpoint.
This file only composes and launches: the service is `lens.service`, the page `lens.ui` and
`lens.tabs`, the model work `rvt/`, every picture `viz/`.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported: idle OpenMP workers sleep

import argparse
import atexit
import shutil
import tempfile
from pathlib import Path

from lens.service import LensService, ServerLimits
from rvt import load_checkpoint, pick_device
from rvt.assets import BUNDLED_CHECKPOINT
from rvt.budget import parse_bytes
from rvt.device import DEVICE_CHOICES, PRECISIONS, thread_policy


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    defaults = ServerLimits()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=env("RVT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("RVT_PORT", "7860")))
    p.add_argument("--checkpoint", type=Path, default=Path(env("RVT_CHECKPOINT", str(BUNDLED_CHECKPOINT))))
    p.add_argument("--device", default=env("RVT_DEVICE", "auto"), help=f"one of {', '.join(DEVICE_CHOICES)}")
    p.add_argument("--precision", choices=PRECISIONS, default=env("RVT_PRECISION", "fp32"),
                   help="bf16: autocast for the model passes, on the CPU and on CUDA")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads per pass (default: env RVT_THREADS, else 1 on a host with 2 cores or fewer, "
                        "else half the cores up to 8)")
    p.add_argument("--session-ttl", type=float, default=float(env("RVT_SESSION_TTL", defaults.session_ttl)),
                   help="seconds of idleness after which a visitor's analysis is freed")
    p.add_argument("--max-side", type=int, default=int(env("RVT_MAX_SIDE", defaults.max_side)),
                   help="largest inference side in px, whatever the model")
    p.add_argument("--memory-budget", type=parse_bytes, default=env("RVT_MEMORY_BUDGET", str(defaults.analysis_bytes)),
                   help="peak memory one analysis may take (e.g. 1GB); larger resolutions are refused before any "
                        "allocation, with the largest size that fits")
    p.add_argument("--total-memory", type=parse_bytes, default=env("RVT_TOTAL_MEMORY", str(defaults.total_bytes)),
                   help="memory the cached analyses of all sessions may take together (e.g. 1GB); the least "
                        "recently used are freed first")
    p.add_argument("--job-timeout", type=float, default=float(env("RVT_JOB_TIMEOUT", defaults.job_timeout)),
                   help="seconds a heavy job (attribution, scorecard, scene scoring, sweep, export) may run "
                        "before it is stopped")
    return p.parse_args(argv)


def limits_from(args: argparse.Namespace) -> ServerLimits:
    return ServerLimits(max_side=args.max_side, analysis_bytes=args.memory_budget, total_bytes=args.total_memory,
                        session_ttl=args.session_ttl, job_timeout=args.job_timeout)


def own_cache() -> Path:
    """A folder of this server's own for Gradio's cache (uploads and every file a response returns), inside
    GRADIO_TEMP_DIR or the system's temp folder, removed on exit: pruning by age (`lens.ui.prune_cache`)
    leaves the newest files behind. Set before gradio is imported, which reads it then."""
    parent = os.environ.get("GRADIO_TEMP_DIR")
    if parent:
        Path(parent).mkdir(parents=True, exist_ok=True)  # Gradio makes it when missing: so do we
    cache = Path(tempfile.mkdtemp(prefix="rvt-lens-cache-", dir=parent))
    os.environ["GRADIO_TEMP_DIR"] = str(cache)
    atexit.register(shutil.rmtree, cache, ignore_errors=True)
    return cache


def main(argv=None) -> None:
    args = parse_args(argv)
    own_cache()
    from lens.ui import build_app, launch  # imports gradio: after its cache folder is set
    thread_policy(args.threads)  # two passes run at once (lens.ui.LANES): on two cores, one thread each
    service = LensService(load_checkpoint(args.checkpoint, pick_device(args.device)), limits_from(args),
                          bf16=args.precision == "bf16")
    atexit.register(service.close)  # exports and cached analyses go with the server
    launch(build_app(service), args.host, args.port)


if __name__ == "__main__":
    main()

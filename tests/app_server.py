"""Launches the explorer in-process on a free port for API and browser tests."""
from __future__ import annotations

import contextlib
import socket

from lens.service import LensService, ServerLimits
from lens.ui import build_app, launch
from rvt import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(checkpoint, limits: ServerLimits | None = None):
    """Yields (url, service); the server and everything the service wrote are gone afterwards."""
    service = LensService(load_checkpoint(checkpoint, "cpu"), limits)
    demo = build_app(service)
    port = free_port()
    try:
        launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{port}/", service
    finally:
        demo.close()
        service.close()

"""Launches the explorer in-process on a free port for API and browser tests."""
from __future__ import annotations

import contextlib
import socket

import app
from rvt import load_checkpoint


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(checkpoint):
    bundle = load_checkpoint(checkpoint, "cpu")
    demo = app.build_app(bundle)
    port = free_port()
    try:
        app.launch(demo, "127.0.0.1", port, prevent_thread_lock=True, quiet=True)
        yield f"http://127.0.0.1:{port}/", bundle
    finally:
        demo.close()

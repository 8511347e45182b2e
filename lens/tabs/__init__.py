"""One module per part of the page. Each builds its components, wires its own events, and says how to
draw itself from the session's current analysis (`draw`) and how to empty itself (`clear`).

`lens.ui` calls every part's `draw` or `clear` after each new analysis, so no panel ever shows an older
image's results: parts marked `lazy` draw only while visible (and when opened), parts that hold the
result of an explicit action (attributions, what-if, export) are cleared instead of redrawn.
"""
from __future__ import annotations

import asyncio
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
import gradio as gr

from lens.service import LensService, UserError


@dataclass
class Context:
    service: LensService
    session: gr.State  # the visitor's session id (str), None before the first upload
    visible: gr.State  # title of the tab on screen
    shared: dict[str, Any] = field(default_factory=dict)  # components other parts read, by name


class Part:
    title = ""
    api = ""  # api_name of the tab's select event
    lazy = False  # draw only while visible: the tab's select event draws it when opened
    redraw = True  # False: its outputs are results of an explicit action, cleared on a new analysis
    opened: tuple | None = None  # (fn, inputs, outputs) run after the tab's select event, e.g. a first draw

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.inputs: list = []  # components draw() reads
        self.names: list[str] = []  # their parameter names on the API page, in the same order
        self.outputs: list = []  # components draw() and clear() write
        self.model_controls: list = []  # components on_model() updates

    def handler(self, fn: Callable[[dict], dict]) -> Callable:
        """fn(values: {component: value}) as a handler over `[ctx.session, *self.inputs]` (see `positional`)."""
        return positional(fn, [self.ctx.session, *self.inputs], ["session", *self.names])

    def draw(self, sid: str, values: dict) -> dict:
        """Updates for the outputs from session `sid`'s current analysis, reading controls from `values`."""
        return self.clear()

    def clear(self) -> dict:
        return {component: None for component in self.outputs}

    def on_model(self, bundle) -> dict:
        """Updates of `model_controls` when the session's model changes (ranges, choices)."""
        return {}

    def wire(self) -> None:
        """Register this part's events; called once every part's components exist."""


def positional(fn: Callable[[dict], Any], components: list, names: list[str]) -> Callable:
    """fn(values: {component: value}) as a Gradio handler taking `components` positionally.

    The API page then lists the inputs by name, in order (not param_1, param_2, ... as for a set of
    inputs), and fn still reads them by component.
    """
    def call(*args):
        return fn(dict(zip(components, args, strict=True)))

    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    call.__signature__ = inspect.Signature([inspect.Parameter(n, kind) for n in names])
    call.__name__ = getattr(fn, "__name__", "handler")
    return call


def click_point(index, width: int, height: int) -> tuple[float, float]:
    """A select event's (x, y) checked against the image it clicked: the browser sends it, so any
    client can send anything."""
    if (not isinstance(index, list | tuple) or len(index) != 2 or not all(isinstance(v, int | float) for v in index)
            or not (0 <= index[0] < width and 0 <= index[1] < height)):
        raise UserError(f"a click must be a point (x, y) inside the {width}x{height} image, not {index!r}")
    return float(index[0]), float(index[1])


def heavy(service: LensService, fn: Callable) -> Callable:
    """A heavy job's handler fn(sid, ...) run on a worker thread that Gradio's cancel reaches.

    Gradio stops an event (the Cancel button's `cancels=`, a client's /cancel, gradio_client's
    Job.cancel()) by cancelling the coroutine that awaits it; a plain sync handler would keep
    computing in its thread until done. Here the await gives up at once and sets the session's
    cancel flag, which the job checks between steps, so the computation stops too.
    """
    @functools.wraps(fn)  # Gradio reads the signature through __wrapped__: gr.Progress is still injected
    async def run(*args, **kwargs):
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *args, **kwargs), abandon_on_cancel=True)
        except (asyncio.CancelledError, anyio.get_cancelled_exc_class()):
            service.cancel(args[0])
            raise
    return run

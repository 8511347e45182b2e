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

from lens.errors import guarded
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


def _abandoned(request: gr.Request | None) -> Callable[[], bool]:
    """A test of whether the visitor behind `request` has gone: true once Gradio has marked one of the
    session's running events dead, which it does when the session's event stream (the page's
    /queue/data, an API client's /call/<api>/<event_id>) disconnects. Gradio then stops sending to the
    event but leaves its handler running; this reads the queue's own record (`Event.alive`). Where a
    Gradio version lacks it, the test is never true and the job ends by Cancel or the time limit."""
    try:
        queue, session = request.request.app.get_blocks()._queue, request.session_hash
        queue.active_jobs  # noqa: B018  (present in Gradio 4-6)
    except AttributeError:
        return lambda: False
    return lambda: any(not event.alive for job in list(queue.active_jobs) if job
                       for event in job if event.session_hash == session)


POLL_S = 0.2  # how often a heavy job looks for its visitor; a disconnect stops the job within a second


def heavy(service: LensService, fn: Callable) -> Callable:
    """A heavy job's handler fn(sid, ...) run on a worker thread that Gradio's cancel reaches.

    Gradio stops an event (the Cancel button's `cancels=`, a client's /cancel, gradio_client's
    Job.cancel()) by cancelling the coroutine that awaits it; a plain sync handler would keep
    computing in its thread until done. Here the await gives up at once and sets the session's
    cancel flag, which the job checks between steps, so the computation stops too. A visitor who
    disconnects sends no cancel: a watcher sets the same flag when Gradio marks the event dead.
    """
    # Gradio injects a gr.Request only into a positional parameter annotated with it: fn's parameters
    # plus `request` last (its Progress default stays where fn put it, so Gradio still injects that too).
    declared = inspect.signature(fn)
    request = inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
                                annotation=gr.Request)
    declared = declared.replace(parameters=[*declared.parameters.values(), request])

    async def run(*args, **kwargs):
        call = declared.bind(*args, **kwargs)
        gone = _abandoned(call.arguments.pop("request", None))
        sid = call.arguments[next(iter(call.arguments))]

        async def watch():
            while not gone():
                await asyncio.sleep(POLL_S)
            service.cancel(sid)

        watcher = asyncio.ensure_future(watch())
        try:
            return await anyio.to_thread.run_sync(functools.partial(fn, *call.args, **call.kwargs),
                                                  abandon_on_cancel=True)
        except (asyncio.CancelledError, anyio.get_cancelled_exc_class()):
            service.cancel(sid)
            raise
        finally:
            watcher.cancel()

    functools.update_wrapper(run, fn)
    run.__signature__ = declared
    run.__annotations__ = {"request": gr.Request}  # what Gradio's get_type_hints reads; fn's own need not resolve here
    return run


def wire_cancel(button: gr.Button, ctx: Context, events: list, api_name: str) -> None:
    """The Cancel button of a tab's heavy `events`: cancels them in Gradio and sets the session's cancel
    flag (a session runs one heavy job at a time, whichever tab started it), and tells the visitor so.
    Queued (a message needs the queue) in a lane of its own, so it never waits behind a job."""
    @guarded
    def stop(sid):
        gr.Info("Cancelling your running job: it stops at its next step." if ctx.service.cancel(sid)
                else "No job of yours is running (or it has just ended).")

    button.click(stop, [ctx.session], None, api_name=api_name, cancels=events, concurrency_id="cancel")

"""The page: composes the parts, runs one analysis per upload and redraws every part from it.

Queue lanes (Gradio concurrency ids) keep visitors from waiting on each other: "pass" for the model
passes an upload, a what-if, the lab's band switch-off or a scene edit needs, "heavy" for attributions,
scorecards, scene scoring, the resolution sweep and exports (one per session at a time, refused at once
otherwise, and stopped by their time limit or a cancel), and Gradio's default lane for renders, which
run no model.
"""
from __future__ import annotations

import contextlib
import ctypes
import datetime
import gc
import os
import threading
import time
import weakref

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.service import LensService
from lens.tabs import Context, positional
from lens.tabs.attention import AttentionPart
from lens.tabs.attributions import AttributionsPart
from lens.tabs.export import ExportPart
from lens.tabs.faithfulness import FaithfulnessPart
from lens.tabs.inputs import InputPart
from lens.tabs.model import ModelPart, model_summary
from lens.tabs.rollout import RolloutPart
from lens.tabs.rotary import RotaryPart
from lens.tabs.rotary_lab import RotaryLabPart
from lens.tabs.scenes import ScenesPart
from lens.tabs.stats import StatsPart
from lens.tabs.whatif import WhatIfPart

TABS = (AttentionPart, RolloutPart, StatsPart, RotaryPart, RotaryLabPart, AttributionsPart, FaithfulnessPart,
        WhatIfPart, ScenesPart, ExportPart)
LANES = {"pass": 2, "heavy": 2}  # a session runs at most one heavy job, so two lanes serve two visitors
MAX_UPLOAD = "128mb"  # a ViT-S-sized checkpoint (~120 MB in fp32) fits; images are bounded again by read_image
THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "Consolas", "monospace"])  # local fonts only: works air-gapped


def build_app(service: LensService) -> gr.Blocks:
    with gr.Blocks(title="RvT Lens") as demo:  # the janitor prunes Gradio's cache (`prune_cache`)
        ctx = Context(service=service, session=gr.State(None, delete_callback=service.close_session),
                      visible=gr.State(AttentionPart.title))
        gr.Markdown(texts.HEADER)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                inputs = InputPart(ctx)
                model = ModelPart(ctx)
            with gr.Column(scale=2), gr.Tabs(overflow_behavior="wrap"):  # every tab in sight, none in a menu
                tabs = []
                for part_type in TABS:
                    with gr.Tab(part_type.title) as tab:
                        tabs.append((part_type(ctx), tab))
        _janitor(demo, service, ctx.session)
        parts = [inputs, *(part for part, _ in tabs)]
        for part in parts:
            part.wire()
        _wire_analysis(ctx, inputs, model, parts, tabs)
    return demo


def _wire_analysis(ctx: Context, inputs: InputPart, model: ModelPart, parts: list, tabs: list) -> None:
    service = ctx.service
    named = {ctx.session: "session", ctx.visible: "visible_tab"}
    for part in parts:
        for component, name in zip(part.inputs, part.names, strict=True):
            named.setdefault(component, name)
    draw_inputs = list(named)  # every part's controls once, in order, named on the API page
    draw_outputs = [c for part in parts for c in part.outputs]

    @guarded
    def analyze(sid, path, height, width):
        """One model pass for the upload; returns the session and the top-5 prediction (the API's answer)."""
        sid = service.session_or_new(sid)
        if not path:  # the image was cleared: nothing to show, nothing stale
            service.clear(sid)
            return sid, None
        analysis = service.analyze(sid, path, (height, width))  # a refusal leaves the session empty
        return sid, dict(analysis.top(5))

    def panels(values: dict) -> dict:
        """Every part from the current analysis: drawn when visible or cheap, cleared otherwise."""
        sid, visible = values[ctx.session], values[ctx.visible]
        ready = service.has_analysis(sid)
        out = {}
        for part in parts:
            fresh = ready and part.redraw and (not part.lazy or part.title == visible)
            out.update(part.draw(sid, values) if fresh else part.clear())
        return out

    redraw = guarded(positional(panels, draw_inputs, list(named.values())))
    analysis_inputs = [ctx.session, inputs.image, inputs.height, inputs.width]
    for trigger, name in ((inputs.image.change, "predict"), (inputs.height.release, "resize_h"),
                          (inputs.width.release, "resize_w")):
        trigger(analyze, analysis_inputs, [ctx.session, inputs.label], api_name=name, concurrency_id="pass",
                trigger_mode="always_last").then(redraw, draw_inputs, draw_outputs,
                                                 api_name=f"{name}_panels")

    def load(values):
        sid = service.session_or_new(values[ctx.session])
        bundle = model.load_model(sid, values)
        out = {ctx.session: sid, model.info: model_summary(bundle)}
        for part in parts:
            out.update(part.on_model(bundle))
        return out

    @guarded
    def reanalyze(sid, path, height, width):
        if not path:
            gr.Info(texts.NO_IMAGE_HINT)
            return sid, None
        return analyze(sid, path, height, width)

    model_outputs = [ctx.session, model.info, *(c for part in parts for c in part.model_controls)]
    load_inputs = [ctx.session, *model.inputs]
    load = guarded(positional(load, load_inputs, ["session", *model.names]))
    loaded = model.load.click(load, load_inputs, model_outputs, api_name="load_model",
                              concurrency_id="pass")
    loaded.success(reanalyze, analysis_inputs, [ctx.session, inputs.label], api_name="load_model_predict",
                   concurrency_id="pass").then(redraw, draw_inputs, draw_outputs,
                                               api_name="load_model_panels")

    for part, tab in tabs:
        selected = tab.select(guarded(part.handler(_opened(ctx, part))), [ctx.session, *part.inputs],
                              [ctx.visible, *part.outputs], api_name=part.api)
        if part.opened:  # a first draw that runs the model, e.g. the Scenes tab's scene model
            selected.then(*part.opened, api_name=f"{part.api}_draw", concurrency_id="pass")


def _opened(ctx: Context, part):
    """Opening a tab records it as visible; a lazy tab is drawn from the current analysis then."""
    def opened(values: dict) -> dict:
        sid = values[ctx.session]
        fresh = part.lazy and ctx.service.has_analysis(sid)
        return {ctx.visible: part.title, **(part.draw(sid, values) if fresh else {})}
    return opened


def forget_gone_visitors(demo: gr.Blocks, service: LensService, session: gr.State) -> int:
    """Free Gradio's record of every visitor who is gone: idle past the session TTL, and with a closed page
    or a service session that has expired. Returns how many went: the sessions the service's sweep freed
    (past their TTL, or idle ones the memory cap dropped) and Gradio records.

    Gradio keeps a SessionState per visitor (a copy of the whole page's config: about 0.5 MB for this
    page) for up to 10,000 visitors and never frees one: a closed page only marks it closed, and an API
    client never opens the heartbeat that would. The service's TTL frees the analyses; this frees the
    rest. A page left open past the TTL keeps its record while its heartbeat says it is open."""
    holder = getattr(demo, "state_holder", None)  # set by launch
    if holder is None:
        return 0
    swept = service.sweep()
    now, ttl = datetime.datetime.now(), datetime.timedelta(seconds=service.limits.session_ttl)
    gone = []
    with holder.lock:
        for key, state in list(holder.session_data.items()):
            last = holder.time_last_used.get(key)
            sid = state.state_data.get(session._id)
            if last is not None and now - last > ttl and (state.is_closed or not service.is_live(sid)):
                holder.session_data.pop(key)
                holder.time_last_used.pop(key, None)
                gone.append(sid)
    for sid in gone:
        service.close_session(sid)
    return swept + len(gone)


def prune_cache(demo: gr.Blocks, age: float) -> int:
    """Delete the files Gradio made for `demo` (uploads, and every file a response returned) not changed
    for `age` seconds, except those a component keeps (its examples), with their folders once empty.
    Returns how many went. The service touches a live session's upload on use, so it stays.

    Gradio's own `delete_cache` does this on a schedule, but its task iterates the live file sets and dies
    for good on the first "Set changed size during iteration", which concurrent uploads cause (seen in
    the soak at 300 visitors, 4 at a time: the cache then only grows). This reads a snapshot of each set."""
    keep = set().union(*(getattr(block, "keep_in_cache", set()) for block in demo.blocks.values()))
    cutoff, removed = time.time() - age, 0
    for files in demo.temp_file_sets:
        gone = set()
        for name in list(files):  # one C-level copy under the GIL: no other thread changes it meanwhile
            if name in keep:
                continue
            try:
                if os.lstat(name).st_ctime < cutoff:
                    os.remove(name)
                    gone.add(name)
                    with contextlib.suppress(OSError):  # Gradio puts each file in a folder named by its hash
                        os.rmdir(os.path.dirname(name))
            except FileNotFoundError:
                gone.add(name)
        files -= {name for name in gone if not os.path.exists(name)}  # one uploaded again meanwhile stays listed
        removed += len(gone)
    return removed


def give_back_freed_memory() -> None:
    """Collect reference cycles, then ask the C library to hand free heap pages back to the OS.

    glibc keeps what a freed session's tensors and Gradio records occupied (after large frees it also
    raises its mmap threshold, so later tensors come from the heap), and the RSS stays at its high-water
    mark: 300 visitors at 28 px left about 90 MB. `malloc_trim(0)` returns those pages; where the C library
    has none (not glibc) this only collects."""
    gc.collect()
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if os.name == "posix" else None


def _janitor(demo: gr.Blocks, service: LensService, session: gr.State) -> None:
    """A daemon thread that every half TTL (1-60 s), while `demo` serves, prunes Gradio's cache of files
    older than the TTL and runs `forget_gone_visitors`, giving the memory back when visitors went; it ends
    once the demo has closed or is gone."""
    every, app = min(60.0, max(1.0, service.limits.session_ttl / 2)), weakref.ref(demo)

    def run():
        served = False
        while (demo := app()) is not None and not (served and not demo.is_running):
            served |= demo.is_running
            if served:
                prune_cache(demo, service.limits.session_ttl)
                if forget_gone_visitors(demo, service, session):
                    give_back_freed_memory()
            del demo
            time.sleep(every)

    threading.Thread(target=run, name="rvt-lens-janitor", daemon=True).start()


def launch(demo: gr.Blocks, host: str, port: int, **kwargs):
    """Launch with the project's limits: bounded queue lanes, capped uploads, no share link."""
    demo.queue(default_concurrency_limit=4, max_size=256)
    for fn in demo.fns.values():
        if fn.concurrency_id in LANES:
            fn.concurrency_limit = LANES[fn.concurrency_id]
    return demo.launch(server_name=host, server_port=port, share=False, max_file_size=MAX_UPLOAD,
                       theme=gr.themes.Default(**THEME_FONTS), show_error=True, **kwargs)

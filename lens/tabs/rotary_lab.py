"""Rotary lab tab: rotary schedules, grids and head sizes live with no model; with an image, how the
loaded model's heads use the bands, a band switch-off what-if and a resolution sweep.

The schedule figures need no analysis: they are drawn when the page is built and on every control
change, from `rvt.rotary_lab.lab_view`, the same view whose JSON the `rotary_lab` endpoint returns.
That endpoint takes exactly (schedule, rows, cols, dim_head, max_freq_or_base); the training grid and
the scaling reach it through a State (hidden from the API), so an API call gets `lab_bands`'s
defaults (training grid = grid, scaling as defined). The figures follow the JSON (its change event)
and are drawn from the view each answer keeps in a State, on the server: never from controls the page
may not have settled yet. Every control costs one JSON answer and one figure answer, neither running
the model.
"""
from __future__ import annotations

import weakref
from pathlib import Path

import gradio as gr
from PIL import Image

from lens import texts
from lens.errors import guarded
from lens.service import NothingChosen, UserError
from lens.tabs import Part, heavy, positional, wire_cancel
from lens.tabs.whatif import layer_choices
from rvt.preprocess import read_image
from rvt.rotary_lab import (
    DEFAULT_VALUE,
    MAX_DIM_HEAD,
    MAX_GRID,
    SCALING_NAMES,
    SCALINGS,
    SWEEP_SCALES,
    LabView,
    band_ablation,
    band_usage,
    build_schedule,
    head_kernels,
    lab_view,
    model_schedule,
    resolution_sweep,
)
from viz.rotary_lab import (
    LESSON,
    ablation_figure,
    kernel_figure,
    phase_figure,
    steps_figure,
    sweep_figure,
    usage_figure,
)

SCHEDULE_CHOICES = [("RvT (max_freq, positions -1..1)", "rvt"), ("RoPE axial (base, integer positions)", "rope"),
                    ("RoPE-Mixed (random directions)", "mixed"), ("this model's own", "model")]


def value_control(kind: str, value: float | None = None) -> dict:
    """Label, value and state of the max_freq / base box for a schedule."""
    label = {"rvt": "max_freq (RvT sets it to the training image size)", "model": "max_freq (the model's)",
             "rope": "base (RoPE-ViT: 100)", "mixed": "base (RoPE-ViT mixed: 10)"}[kind]
    return dict(label=label, value=DEFAULT_VALUE.get(kind) if value is None else value, interactive=kind != "model")


def scaling_control(kind: str, value: str = "native") -> dict:
    allowed = SCALINGS[kind]
    return dict(choices=[(f"{s}: {SCALING_NAMES[s]}", s) for s in allowed],
                value=value if value in allowed else "native", interactive=len(allowed) > 1)


def band_choices(bundle) -> list[tuple[str, str]]:
    """Every (axis, band) of the model's rotary as "row b" / "col b"."""
    bands = bundle.config.dim_head // 4 if bundle.config.use_rotary else 0
    return [(f"{axis} band {b}", f"{axis} {b}") for axis in ("row", "col") for b in range(bands)]


def model_settings(bundle) -> dict:
    """The lab controls set to a model's own RvT numbers (within the lab's ranges)."""
    c = bundle.config
    rows, cols = (min(n, MAX_GRID) for n in bundle.train_grid)
    return {"schedule": "rvt", "rows": rows, "cols": cols, "dim_head": min(max(c.dim_head, 4), MAX_DIM_HEAD),
            "max_freq_or_base": float(min(max(c.image_size, 1), 4096)), "scaling": "native"}


class RotaryLabPart(Part):
    title = "Rotary lab"
    api = "tab_rotary_lab"  # the tab-select event
    lazy = True

    def __init__(self, ctx):
        super().__init__(ctx)
        bundle = ctx.service.bundled.bundle
        start = model_settings(bundle)
        gr.Markdown(texts.LAB)
        with gr.Row():
            self.schedule = gr.Radio(SCHEDULE_CHOICES, value=start["schedule"], label="schedule", scale=3)
            self.value = gr.Number(minimum=1, maximum=1e6, **value_control("rvt", start["max_freq_or_base"]),
                                   elem_id="lab-value", scale=1)
        with gr.Row():
            self.rows = gr.Slider(1, MAX_GRID, value=start["rows"], step=1, label="grid rows", elem_id="lab-rows")
            self.cols = gr.Slider(1, MAX_GRID, value=start["cols"], step=1, label="grid columns", elem_id="lab-cols")
            self.dim_head = gr.Slider(4, MAX_DIM_HEAD, value=start["dim_head"], step=4, label="dim_head",
                                      elem_id="lab-dim-head")
        with gr.Row():
            self.train_rows = gr.Slider(0, MAX_GRID, value=0, step=1, label="training rows (0: = grid)",
                                        elem_id="lab-train-rows")
            self.train_cols = gr.Slider(0, MAX_GRID, value=0, step=1, label="training columns (0: = grid)",
                                        elem_id="lab-train-cols")
        self.scaling = gr.Radio(label="scaling for a grid larger than the training grid", **scaling_control("rvt"))
        self.settings = gr.State(None)  # {"train": [rows, cols] or None, "scaling"}; None for API calls
        self.shown = gr.State(None)  # the LabView last answered: the figures are drawn from it, server-side
        with gr.Accordion("Guided lesson", open=True):
            self.step = gr.Radio([(s["title"], i) for i, s in enumerate(LESSON)], value=None,
                                 label="step (sets the controls above)", elem_id="lab-step")
            self.look = gr.Markdown(texts.LAB_LESSON, elem_id="lab-look")
        first = self.view(self.start_values(start))
        self.phase_img, self.steps_img, self.kernel_img = (
            gr.Image(figure, label=label, show_label=False, elem_id=elem, interactive=False, format="png",
                     buttons=["download"])
            for figure, label, elem in zip(self.figures(first),
                                           ("phase of each band", "step per patch against pi",
                                            "idealised relative-position kernel"),
                                           ("lab-phase", "lab-steps", "lab-kernel"), strict=True))
        with gr.Accordion("Numbers (the rotary_lab API's answer)", open=False):
            self.json = gr.JSON(first.to_json(), label="bands", elem_id="lab-json")

        gr.Markdown(texts.LAB_MODEL)
        self.note = gr.Markdown(label="lab model note", elem_id="lab-note")
        self.head_img = gr.Image(label="this head's kernel", show_label=False, elem_id="lab-head-img",
                                 interactive=False, format="png")
        self.usage_img = gr.Image(label="band usage", show_label=False, elem_id="lab-usage-img", interactive=False,
                                  format="png")
        gr.Markdown(texts.LAB_WHATIF)
        with gr.Row():
            self.bands_off = gr.CheckboxGroup(band_choices(bundle), label="switch off bands", scale=2)
            self.layers_off = gr.CheckboxGroup(layer_choices(bundle.config), label="in layers", scale=1)
        self.ablate = gr.Button("Re-run with these bands off", variant="primary")
        self.ablation_img = gr.Image(label="band switch-off", show_label=False, elem_id="lab-ablation-img",
                                     interactive=False, format="png")
        gr.Markdown(texts.LAB_SWEEP)
        with gr.Row():
            self.sweep = gr.Button("Run the resolution sweep", variant="primary")
            self.stop = gr.Button("Cancel", variant="stop")
        self.sweep_note = gr.Markdown(label="sweep note", elem_id="lab-sweep-note")
        self.sweep_img = gr.Image(label="resolution sweep", show_label=False, elem_id="lab-sweep-img",
                                  interactive=False, format="png")
        self.result_for = gr.State(None)  # id() of the analysis the what-if / sweep results belong to
        self._results = weakref.WeakValueDictionary()  # id -> that analysis while it lives

        self.inputs = [ctx.shared["layer"], ctx.shared["head"], self.result_for]
        self.names = ["layer", "head", "lab_results_for"]
        self.outputs = [self.note, self.head_img, self.usage_img, self.ablation_img, self.sweep_note, self.sweep_img]
        self.model_controls = [self.schedule, self.rows, self.cols, self.dim_head, self.value, self.train_rows,
                               self.train_cols, self.scaling, self.settings, self.json, self.shown, self.bands_off,
                               self.layers_off]
        self.lab_inputs = [self.schedule, self.rows, self.cols, self.dim_head, self.value, ctx.session, self.settings]
        self.lab_names = ["schedule", "rows", "cols", "dim_head", "max_freq_or_base", "session", "settings"]

    # ---- the schedule lab (no model pass) -----------------------------------------------------------

    def start_values(self, settings: dict) -> dict:
        return {self.schedule: settings["schedule"], self.rows: settings["rows"], self.cols: settings["cols"],
                self.dim_head: settings["dim_head"], self.value: settings["max_freq_or_base"],
                self.ctx.session: None, self.settings: None}

    def view(self, values: dict) -> LabView:
        """The lab's one computation, for the JSON and the figures alike."""
        kind, settings = values[self.schedule], values[self.settings] or {}
        rows, cols = values[self.rows], values[self.cols]
        train = settings.get("train")
        train = None if train is None else (train[0] or rows, train[1] or cols)
        try:
            if kind == "model":
                sid = values[self.ctx.session]
                bundle = self.ctx.service.session(sid).bundle if sid else self.ctx.service.bundled.bundle
                schedule = model_schedule(bundle.model)
            else:
                schedule = build_schedule(kind, values[self.dim_head], values[self.value])
            return lab_view(schedule, (rows, cols), train, settings.get("scaling", "native"))
        except (ValueError, TypeError) as e:
            raise UserError(str(e)) from None

    def answer(self, view: LabView) -> dict:
        """The JSON (what the API returns) and, hidden, the view the figures are drawn from."""
        return {self.json: view.to_json(), self.shown: view}

    @staticmethod
    def figures(view: LabView) -> tuple[Image.Image, Image.Image, Image.Image]:
        return phase_figure(view), steps_figure(view), kernel_figure(view)

    @staticmethod
    def resolution(train_rows, train_cols, scaling: str) -> dict | None:
        """The hidden settings from the training-grid sliders (0 or None: the grid's) and the scaling;
        None when all are defaults. An axis left at 0 follows the grid (as in lab_bands)."""
        train = [int(train_rows or 0), int(train_cols or 0)]
        if train == [0, 0] and scaling == "native":
            return None
        return {"train": None if train == [0, 0] else train, "scaling": scaling}

    def on_schedule(self, values: dict) -> dict:
        """A new schedule: its own max_freq / base, the scalings that apply to it, and the new answer."""
        kind = values[self.schedule]
        value, dim_head = None, values[self.dim_head]
        if kind == "model":
            sid = values[self.ctx.session]
            config = (self.ctx.service.session(sid).bundle if sid else self.ctx.service.bundled.bundle).config
            value, dim_head = float(config.image_size), config.dim_head
        settings = values[self.settings] or {}
        scaling = scaling_control(kind, settings.get("scaling", "native"))
        settings = self.resolution(*(settings.get("train") or (0, 0)), scaling["value"])
        values = {**values, self.value: value_control(kind)["value"] if value is None else value,
                  self.dim_head: dim_head, self.settings: settings}
        return {self.value: gr.Number(**value_control(kind, values[self.value])),
                self.dim_head: gr.Slider(value=dim_head, interactive=kind != "model"),
                self.scaling: gr.Radio(**scaling), self.settings: settings,
                **self.answer(self.view(values))}

    def on_resolution(self, values: dict) -> dict:
        settings = self.resolution(values[self.train_rows], values[self.train_cols], values[self.scaling])
        return {self.settings: settings, **self.answer(self.view({**values, self.settings: settings}))}

    def on_lesson(self, values: dict) -> dict:
        step = values[self.step]
        if step is None or not 0 <= int(step) < len(LESSON):
            raise UserError(f"lesson step must be 0..{len(LESSON) - 1}, not {step!r}")
        lesson = LESSON[int(step)]
        s = lesson["settings"]
        train_rows, train_cols = s.get("train_rows"), s.get("train_cols")
        settings = self.resolution(train_rows, train_cols, s["scaling"])
        values = {**values, self.schedule: s["schedule"], self.rows: s["rows"], self.cols: s["cols"],
                  self.dim_head: s["dim_head"], self.value: s["max_freq_or_base"], self.settings: settings}
        return {self.schedule: s["schedule"], self.rows: s["rows"], self.cols: s["cols"],
                self.dim_head: gr.Slider(value=s["dim_head"], interactive=True),
                self.value: gr.Number(**value_control(s["schedule"], s["max_freq_or_base"])),
                self.train_rows: train_rows or 0, self.train_cols: train_cols or 0,
                self.scaling: gr.Radio(**scaling_control(s["schedule"], s["scaling"])), self.settings: settings,
                **self.answer(self.view(values)), self.look: f"**{lesson['title']}.** {lesson['look']}"}

    # ---- with an analysis ------------------------------------------------------------------------------

    def clear(self) -> dict:
        return {component: None for component in self.outputs}

    def draw(self, sid, values) -> dict:
        service = self.ctx.service
        analysis, data = service.current(sid), service.session(sid)
        fresh = self._results.get(values[self.result_for]) is analysis  # results of this very analysis
        out = {**self.clear(), **({self.ablation_img: gr.skip(), self.sweep_note: gr.skip(),
                                   self.sweep_img: gr.skip()} if fresh else {})}
        config = data.bundle.config
        if not config.use_rotary:
            return {**out, self.note: texts.NO_ROTARY}
        layer = min(max(int(values[self.inputs[0]]), 0), config.depth - 1)
        head = min(max(int(values[self.inputs[1]]), 0), config.heads - 1)
        query = None if data.query is None else data.query[0] * analysis.grid[1] + data.query[1]
        schedule = model_schedule(data.bundle.model)
        view = lab_view(schedule, analysis.grid)
        counts = view.aliasing()
        return {**out, self.note: texts.lab_model_note(schedule.name, analysis.grid, counts["row"], counts["col"],
                                                       schedule.bands),
                self.head_img: kernel_figure(view, head_kernels(analysis, schedule, layer, head, query)),
                self.usage_img: usage_figure(band_usage(analysis, schedule))}

    def stamp(self, sid: str) -> int:
        """Names the session's current analysis for `result_for`: results stay shown while it is current."""
        analysis = self.ctx.service.current(sid)
        self._results[id(analysis)] = analysis
        return id(analysis)

    def ablation(self, values: dict) -> dict:
        service, sid = self.ctx.service, values[self.ctx.session]
        analysis, data = service.current(sid), service.session(sid)
        if not data.bundle.config.use_rotary:
            raise UserError("This model has no rotary embedding: there are no bands to switch off.")
        bands = [(axis, int(b)) for axis, b in (str(v).split() for v in values[self.bands_off] or [])]
        layers = sorted({int(v) for v in values[self.layers_off] or []})
        if not bands or not layers:
            raise NothingChosen("Choose at least one band and one layer to switch off.")
        try:
            with service._borrow(data, sid) as replica:
                result = band_ablation(replica, analysis, {layer: bands for layer in layers})
        except ValueError as e:
            raise UserError(str(e)) from None
        return {self.ablation_img: ablation_figure(result), self.result_for: self.stamp(sid)}

    def sweep_scales(self, bundle) -> tuple[list[float], list[float]]:
        """SWEEP_SCALES split into those within the server's largest side and those above it."""
        patch, limit = bundle.config.patch_size, self.ctx.service.limits.max_side
        fits = [s for s in SWEEP_SCALES if max(round(n * s) for n in bundle.train_grid) * patch <= limit]
        return fits, [s for s in SWEEP_SCALES if s not in fits]

    def run_sweep(self, sid: str, progress=None) -> dict:
        """The sweep on a borrowed replica inside the session's job (cancellable, time-limited)."""
        service = self.ctx.service
        analysis, data = service.current(sid), service.session(sid)
        scales, too_large = self.sweep_scales(data.bundle)
        image = read_image(data.path) if data.path and Path(data.path).exists() else Image.fromarray(analysis.image)
        patch, largest = data.bundle.config.patch_size, max(scales)  # the widest pass it runs, within the budget
        need = service.pass_bytes(data.bundle, tuple(round(n * largest) * patch for n in data.bundle.train_grid))
        with service.job(sid) as job, service._borrow(data, sid, need) as replica:
            sweep = resolution_sweep(replica, image, scales, progress=progress, check=job.check,
                                     budget=service.limits.analysis_bytes)
        if not sweep["rows"]:
            raise UserError("No size of the sweep fits this server's limits.")
        return {self.sweep_img: sweep_figure(sweep), self.sweep_note: texts.sweep_note(sweep, too_large),
                self.result_for: self.stamp(sid)}

    def on_model(self, bundle) -> dict:
        s = model_settings(bundle)
        values = self.start_values(s)
        return {self.schedule: s["schedule"], self.rows: s["rows"], self.cols: s["cols"],
                self.dim_head: gr.Slider(value=s["dim_head"], interactive=True),
                self.value: gr.Number(**value_control("rvt", s["max_freq_or_base"])), self.train_rows: 0,
                self.train_cols: 0, self.scaling: gr.Radio(**scaling_control("rvt")), self.settings: None,
                **self.answer(self.view(values)),
                self.bands_off: gr.CheckboxGroup(choices=band_choices(bundle), value=[]),
                self.layers_off: gr.CheckboxGroup(choices=layer_choices(bundle.config), value=[])}

    # ---- events ----------------------------------------------------------------------------------------

    def wire(self) -> None:
        ctx = self.ctx
        lab = [*self.lab_inputs]
        names = [*self.lab_names]

        def answer(values):
            return self.answer(self.view(values))

        @guarded
        def draw_figures(view):
            return list(self.figures(view)) if view is not None else [gr.skip()] * 3

        # The API: exactly (schedule, rows, cols, dim_head, max_freq_or_base) -> JSON; session and settings
        # are States, which the API page does not list.
        gr.on([self.rows.input, self.cols.input, self.dim_head.input, self.value.submit, self.value.blur],
              guarded(positional(answer, lab, names)), lab, [self.json, self.shown], api_name="rotary_lab",
              trigger_mode="always_last")
        self.schedule.input(guarded(positional(self.on_schedule, lab, names)), lab,
                            [self.value, self.dim_head, self.scaling, self.settings, self.json, self.shown],
                            api_name="rotary_lab_schedule")
        resolution = [*lab, self.train_rows, self.train_cols, self.scaling]
        gr.on([self.train_rows.input, self.train_cols.input, self.scaling.input],
              guarded(positional(self.on_resolution, resolution, [*names, "train_rows", "train_cols", "scaling"])),
              resolution, [self.settings, self.json, self.shown], api_name="rotary_lab_resolution",
              trigger_mode="always_last")
        lesson = [*lab, self.step]
        self.step.input(guarded(positional(self.on_lesson, lesson, [*names, "step"])), lesson,
                        [self.schedule, self.rows, self.cols, self.dim_head, self.value, self.train_rows,
                         self.train_cols, self.scaling, self.settings, self.json, self.shown, self.look],
                        api_name="rotary_lab_lesson")
        self.json.change(draw_figures, self.shown, [self.phase_img, self.steps_img, self.kernel_img],
                         api_name="rotary_lab_figures", trigger_mode="always_last")

        ablate = [ctx.session, self.bands_off, self.layers_off]
        self.ablate.click(guarded(positional(self.ablation, ablate, ["session", "bands", "layers"])), ablate,
                          [self.ablation_img, self.result_for], api_name="band_switch_off", concurrency_id="pass")

        @guarded
        def sweep(sid, progress=gr.Progress()):
            progress(0.0, desc="resolution sweep")
            return self.run_sweep(sid, lambda f: progress(f, desc="resolution sweep"))

        job = heavy(ctx.service, sweep)
        event = self.sweep.click(job, [ctx.session], [self.sweep_img, self.sweep_note, self.result_for],
                                 api_name="resolution_sweep", concurrency_id="heavy")
        wire_cancel(self.stop, ctx, [event], "cancel_sweep")

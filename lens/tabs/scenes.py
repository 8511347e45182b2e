"""Scenes tab: a scene editor over the three scene models, with explanations scored against the truth.

The scene is the visitor's own `SceneSpec` (kept in a gr.State, so it never comes from the client):
move the red and blue objects with the sliders or by clicking, add or remove distractors, draw a
new random test scene, switch between the models and between the training size, zoom and extend.
Every edit runs one pass on the chosen scene model (shared, read-only) and scores the attention
maps against the key objects' masks; scoring every method and the per-head statistics over 200
test scenes are buttons of their own (heavy jobs).
"""
from __future__ import annotations

from dataclasses import replace

import gradio as gr

from lens import texts
from lens.errors import guarded
from lens.service import LIVE_SCENE_METHODS, UserError
from lens.tabs import Part, click_point, heavy, wire_cancel
from rvt.assets import SCENE_CHECKPOINTS
from rvt.groundtruth import TEST_SEED
from rvt.scenes import BASE, Scene, SceneSpec, add_distractor, centred, random_spec, scene_seed
from viz import panels
from viz.scenes import head_mass_image, relevance_image, scene_image

MODELS = list(SCENE_CHECKPOINTS)
VIEWS = {  # how the scene is rendered: (pixels (H, W), canvas in scene units or None for the training canvas)
    "training size (32x32)": (BASE, None),
    "zoom 2x (64x64)": ((2 * BASE[0], 2 * BASE[1]), None),
    "extend 2x (64x64)": ((2 * BASE[0], 2 * BASE[1]), (2 * BASE[0], 2 * BASE[1])),
}
OBJECTS = ("red", "blue")


def first_spec() -> dict:
    return random_spec(scene_seed(TEST_SEED, 0)).to_dict()


def render(spec: SceneSpec, view: str) -> tuple[Scene, tuple[float, float]]:
    """The scene as the view draws it, and the offset (dy, dx) of the edited canvas inside it."""
    if view not in VIEWS:
        raise UserError(f"unknown view {view!r}: choose one of {', '.join(VIEWS)}")
    size, canvas = VIEWS[view]
    if canvas is None:
        return Scene.from_spec(spec, size), (0.0, 0.0)
    return Scene.from_spec(centred(spec, canvas)), ((canvas[0] - spec.height) / 2, (canvas[1] - spec.width) / 2)


def clicked_point(spec: SceneSpec, view: str, index) -> tuple[float, float]:
    """The point of `spec`'s canvas, in scene units, under a click at `index` ((x, y) in pixels of the
    scene image as shown); a click outside the image is refused."""
    scene, (dy, dx) = render(spec, view)
    width, height = scene_image(scene.image, scene.masks).size
    x, y = click_point(index, width, height)
    # the shown image spans the rendered canvas (scene.spec); the edited canvas sits at (dy, dx) in it
    return x / width * scene.spec.width - dx, y / height * scene.spec.height - dy


def moved(spec: SceneSpec, name: str, x: float, y: float) -> SceneSpec:
    """`spec` with object `name` (red or blue) centred at (x, y), clipped to the canvas."""
    if name not in OBJECTS:
        raise UserError(f"only the red and blue objects can be moved, not {name!r}")
    x, y = min(max(float(x), 0.0), spec.width), min(max(float(y), 0.0), spec.height)
    return replace(spec, **{name: replace(getattr(spec, name), x=x, y=y)})


def scores_table(scores: dict[str, dict[str, float]]) -> str:
    """Markdown: mass and rank accuracy per map, the best real method of each column in bold."""
    real = {m: s for m, s in scores.items() if m not in ("random", "uniform map")}
    best = {k: max(real, key=lambda m: real[m][k]) for k in ("mass", "rank")} if real else {}
    lines = ["| map | mass on the key objects | rank accuracy |", "|---|---|---|"]
    for method, s in scores.items():
        cells = [f"**{s[k]:.3f}**" if best.get(k) == method else f"{s[k]:.3f}" for k in ("mass", "rank")]
        lines.append(f"| {method} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def silencing_table(silenced: dict[str, dict[str, float]], count: int) -> str:
    queries = {"cls": "heads ranked by the CLS query's mass", "patches": "ranked by the patch queries' mass"}
    rows = list(next(iter(silenced.values())))
    lines = [f"| accuracy on {count} test scenes | " + " | ".join(queries[q] for q in silenced) + " |",
             "|---|" + "---|" * len(silenced)]
    lines += [f"| {row} | " + " | ".join(f"{silenced[q][row]:.1%}" for q in silenced) + " |" for row in rows]
    return "\n".join(lines)


class ScenesPart(Part):
    title = "Scenes"
    api = "tab_scenes"  # the tab-select event
    # No outputs for `draw`/`clear`: the scene does not depend on the upload, so a new analysis leaves it.

    def __init__(self, ctx):
        super().__init__(ctx)
        gr.Markdown(texts.SCENES)
        self.spec = gr.State(first_spec())
        with gr.Row():
            self.model = gr.Radio(MODELS, value=MODELS[0], label="scene model")
            self.view = gr.Radio(list(VIEWS), value=next(iter(VIEWS)), label="render at")
        with gr.Row():
            self.sliders = {}
            for name in OBJECTS:
                for axis, limit in (("x", BASE[1]), ("y", BASE[0])):
                    self.sliders[name, axis] = gr.Slider(0, limit, step=0.1, label=f"{name} {axis}",
                                                         elem_id=f"scene-{name}-{axis}")
        with gr.Row():
            self.click_moves = gr.Radio(list(OBJECTS), value="red", label="a click on the scene moves",
                                        elem_id="scene-click-moves")
            self.method = gr.Dropdown(list(LIVE_SCENE_METHODS), value="Gradient rollout", label="map shown")
            self.show_masks = gr.Checkbox(value=True, label="outline the key objects")
        with gr.Row():
            self.random = gr.Button("New random test scene")
            self.add = gr.Button("Add a distractor")
            self.remove = gr.Button("Remove a distractor")
        with gr.Row():
            self.scene_img = gr.Image(label="scene", elem_id="scene-img",
                                      interactive=False, format="png", height=280)
            self.map_img = gr.Image(label="map", elem_id="scene-map", interactive=False,
                                    format="png", height=280)
            with gr.Column():
                self.label = gr.Label(num_top_classes=4, label="prediction", elem_id="scene-pred")
                self.truth = gr.Markdown(elem_id="scene-truth")
        self.heads_img = gr.Image(label="CLS attention of the last layer, per head", elem_id="scene-heads",
                                  show_label=False, interactive=False, format="png")
        self.scores = gr.Markdown(elem_id="scene-scores")
        gr.Markdown(texts.SCENES_METHODS)
        with gr.Row():
            self.all_methods = gr.Button("Score every method on this scene")
            self.head_jobs = gr.Button("Heads with a job (200 test scenes)")
            self.stop = gr.Button("Cancel", variant="stop")
        self.all_scores = gr.Markdown(elem_id="scene-all-scores")
        with gr.Row():
            self.mass_cls = gr.Image(label="per-head mass on the key objects, CLS query", interactive=False,
                                     format="png", elem_id="scene-mass-cls", show_label=False)
            self.mass_patches = gr.Image(label="per-head mass on the key objects, patch queries", interactive=False,
                                         format="png", elem_id="scene-mass-patches", show_label=False)
        self.silenced = gr.Markdown(elem_id="scene-silenced")
        self.view_outputs = [self.scene_img, self.map_img, self.label, self.truth, self.heads_img, self.scores,
                             self.all_scores, *self.sliders.values()]

    def show(self, spec: SceneSpec, model: str, view: str, method: str, show_masks: bool) -> dict:
        """Every live output for `spec`: one pass on the scene model, the maps scored against the masks."""
        if method not in LIVE_SCENE_METHODS:
            raise UserError(f"unknown map {method!r}: choose one of {', '.join(LIVE_SCENE_METHODS)}")
        scene, _ = render(spec, view)
        result = self.ctx.service.analyze_scene(model, scene)
        analysis = result.analysis
        predicted = analysis.labels[int(analysis.probs.argmax())]
        verdict = "right" if predicted == scene.label else "wrong"
        return {self.scene_img: scene_image(scene.image, scene.masks, show_masks),
                self.map_img: relevance_image(scene.image, result.maps[method], scene.masks, show_masks),
                self.label: dict(analysis.top(4)),
                self.truth: texts.SCENE_TRUTH.format(truth=scene.label, top=predicted, p=float(analysis.probs.max()),
                                                     verdict=verdict, distractors=len(spec.distractors)),
                self.heads_img: panels.heads_panel(analysis, len(analysis.trace.layers) - 1),
                self.scores: scores_table(result.scores),
                self.all_scores: "",
                **{slider: round(getattr(getattr(spec, name), axis), 1)
                   for (name, axis), slider in self.sliders.items()}}

    def wire(self) -> None:
        ctx, service = self.ctx, self.ctx.service
        settings = [self.model, self.view, self.method, self.show_masks]
        outputs = [self.spec, *self.view_outputs]

        def view_of(spec: SceneSpec, *settings_values) -> dict:
            return {self.spec: spec.to_dict(), **self.show(spec, *settings_values)}

        @guarded
        def redraw(spec, *values):
            return view_of(SceneSpec.from_dict(spec), *values)

        @guarded
        def move(spec, rx, ry, bx, by, *values):
            spec = moved(moved(SceneSpec.from_dict(spec), "red", rx, ry), "blue", bx, by)
            return view_of(spec, *values)

        @guarded
        def click(spec, which, model, view, method, show_masks, evt: gr.SelectData):
            spec = SceneSpec.from_dict(spec)
            return view_of(moved(spec, which, *clicked_point(spec, view, evt.index)), model, view, method, show_masks)

        @guarded
        def new_random(spec, *values):
            seed = SceneSpec.from_dict(spec).seed
            return view_of(random_spec(scene_seed(TEST_SEED, seed % 1_000_003 + 1)), *values)

        @guarded
        def add(spec, *values):
            spec = SceneSpec.from_dict(spec)
            try:
                return view_of(add_distractor(spec, seed=(spec.seed, len(spec.distractors))), *values)
            except ValueError as e:
                raise UserError(str(e)) from None

        @guarded
        def remove(spec, *values):
            spec = SceneSpec.from_dict(spec)
            if not spec.distractors:
                raise UserError("This scene has no distractor left to remove.")
            return view_of(replace(spec, distractors=spec.distractors[:-1]), *values)

        @guarded
        def score_all(sid, spec, model, view, progress=gr.Progress()):
            sid = service.session_or_new(sid)
            progress(0.0, desc="scoring every method")
            scene, _ = render(SceneSpec.from_dict(spec), view)
            scores = service.score_scene_methods(sid, model, scene)
            return sid, texts.SCENE_ALL_METHODS.format(model=model) + "\n\n" + scores_table(scores)

        @guarded
        def heads(sid, model, progress=gr.Progress()):
            sid = service.session_or_new(sid)
            progress(0.0, desc="per-head mass")
            found = service.scene_heads(sid, model, progress=lambda f: progress(f, desc="per-head mass"))
            uniform = float(found.mass["uniform"])
            return {ctx.session: sid,
                    self.mass_cls: head_mass_image(found.mass["cls"], uniform, f"{model}, CLS query"),
                    self.mass_patches: head_mass_image(found.mass["patches"], uniform, f"{model}, patch queries"),
                    self.silenced: texts.SCENE_SILENCING.format(k=found.k, model=model) + "\n\n"
                                   + silencing_table(found.silencing, found.count)}

        inputs = [self.spec, *settings]
        sliders = list(self.sliders.values())
        self.opened = (redraw, inputs, outputs)  # lens.ui runs it when the tab is opened
        for control, name in zip(settings, ("scene_model", "scene_view", "scene_map", "scene_masks"), strict=True):
            control.input(redraw, inputs, outputs, api_name=name, concurrency_id="pass")
        for slider in sliders:
            slider.release(move, [self.spec, *sliders, *settings], outputs, api_name="scene_move",
                           trigger_mode="always_last", concurrency_id="pass")
        self.scene_img.select(click, [self.spec, self.click_moves, *settings], outputs, api_name="scene_click",
                              concurrency_id="pass")
        self.random.click(new_random, inputs, outputs, api_name="scene_random", concurrency_id="pass")
        self.add.click(add, inputs, outputs, api_name="scene_add", concurrency_id="pass")
        self.remove.click(remove, inputs, outputs, api_name="scene_remove", concurrency_id="pass")
        scored = self.all_methods.click(heavy(service, score_all), [ctx.session, self.spec, self.model, self.view],
                                        [ctx.session, self.all_scores], api_name="scene_scores",
                                        concurrency_id="heavy")
        found = self.head_jobs.click(heavy(service, heads), [ctx.session, self.model],
                                     [ctx.session, self.mass_cls, self.mass_patches, self.silenced],
                                     api_name="scene_heads", concurrency_id="heavy")
        wire_cancel(self.stop, ctx, [scored, found], "cancel_scene_job")

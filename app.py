"""RvT Lens: what is this rotary Vision Transformer looking at, and what does its rotary embedding do?

`python app.py` serves the explorer on 127.0.0.1:7860 with the bundled Fashion-MNIST checkpoint.
This file is UI wiring: the model work is in `rvt/`, every picture comes from `viz/`.
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no phoning home

import argparse
import functools
import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import torch

from rvt import CheckpointError, RvT, RvTConfig, load_checkpoint, pick_device
from rvt.analysis import Analysis, analyze, analyze_input, attention_gradients
from rvt.checkpoint import Bundle
from rvt.device import DEVICE_CHOICES
from rvt.preprocess import ImageInputError, Preprocess, read_image
from viz import panels
from viz.attributions import METHODS, attribute, attribution_figure
from viz.render import figure_to_image
from viz.report import write_report
from viz.rollout import FUSIONS

ROOT = Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = ROOT / "assets" / "rvt_fashion_mnist.safetensors"
EXAMPLES = sorted((ROOT / "assets" / "examples").glob("*.png"))
BUNDLED, UPLOADED, RANDOM = "Bundled Fashion-MNIST RvT", "Upload a checkpoint", "Random RvT (untrained)"

EXPLAIN = {
    "attention": """**Attention.** Each tile is one head of the chosen layer. Bright patches are where the
**CLS token** (the summary the classifier reads) takes information from. Click a patch on the single-head
view to see where *that patch* looks instead. Heads that attend to nearby patches show a bright spot
around the query; heads that look everywhere are smooth. The bottom grid shows every layer and head at once.""",
    "rollout": """**Attention rollout** follows information through all layers: each layer's attention
(heads fused by mean, max or min), plus the identity for the residual connection, rows renormalised,
multiplied from the first layer to the last. **Gradient rollout** weights each attention map by its
gradient for one class (positive part only), so it shows patches that *support that class*. Discarding
the weakest attention weights sharpens the map.""",
    "stats": """**Head statistics.** *Mean attention distance*: how far, in pixels, a head looks from each patch
on average (the ViT paper's Figure 7): low means local, like a convolution; the dashed line is what
uniform attention would give. *Entropy*: how spread out attention is (0 = one patch). *Share on CLS*:
how much patches read from the CLS token.""",
    "rotary": """**Rotary embedding.** RvT has no position vectors: it *rotates* query and key pairs by an angle
that grows with the patch's row (first half of each head) and column (second half), so q.k depends on the
*offset* between patches. *Bands*: cos of the angle of a few frequency bands over the grid. *Nyquist*: the
angle step between neighbouring patches; above pi (red) a band aliases, so neighbours look far apart.
RvT spaces frequencies linearly up to image_size/2, so most bands alias. *Kernel*: for the selected query
patch, the similarity rotary alone imposes on each key patch, then this head's real q.k without and with the
rotation, and what the rotation changed. Pick the query by clicking a patch on the attention tab.""",
    "attributions": """**Attributions** (captum) score each input pixel for the chosen class. *Integrated
Gradients* integrates gradients from a black image to the input (the scores add up to the change in the
class logit); *Saliency* is the plain gradient; *Occlusion* blanks windows and watches the score drop;
*GradientShap* averages gradients over random baselines. *SmoothGrad* averages over noisy copies.""",
    "whatif": """**What-if.** Switch off heads (their output is zeroed) or the rotary rotation in some
layers, re-run, and compare with the original prediction and attention. A large change means the model
relies on that head or on position information there.""",
    "export": """**Export** writes every panel as PNG, a `summary.json` (prediction, per-head statistics,
aliasing bands) and the captured tensors (`tensors.npz`: attention, rotary tables, q/k) into one zip.""",
}


@dataclass
class Session:
    """Per-user state kept in gr.State: a custom model if any, the cached analysis, derived caches."""

    bundle: Bundle | None = None  # None: the shared, read-only bundled model
    analysis: Analysis | None = None
    gradients: dict[int, torch.Tensor] = field(default_factory=dict)  # class -> attention gradients
    query: tuple[int, int] | None = None  # patch picked by clicking; None = CLS


def checked_image(**kwargs) -> gr.Image:
    """A gr.Image whose decoding failures reach the user as a message, not a stack trace.

    The instance's preprocess is wrapped rather than subclassing gr.Image: a Component subclass makes
    Gradio write a type-stub file next to this module at import time.
    """
    image = gr.Image(**kwargs)
    decode = image.preprocess

    def preprocess(payload):
        try:
            return decode(payload)
        except gr.Error:
            raise
        except Exception as e:  # Pillow raises many types for hostile files; all mean "not an image"
            raise gr.Error(f"Could not read the upload as an image ({type(e).__name__}). Accepted: a single "
                           f"still PNG, JPEG, WebP, BMP, TIFF or GIF image.") from None

    image.preprocess = preprocess
    return image


def user_errors(fn):
    """Turn expected failures into gr.Error messages; the server keeps serving."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except gr.Error:
            raise
        except (ImageInputError, CheckpointError) as e:
            raise gr.Error(str(e)) from None
        except torch.cuda.OutOfMemoryError:
            torch.cuda.empty_cache()
            raise gr.Error("The GPU ran out of memory at this resolution: lower the inference resolution "
                           "or the number of attribution steps.") from None
        except ValueError as e:
            raise gr.Error(str(e)) from None
    return wrapper


def build_app(bundle: Bundle, bf16: bool = False) -> gr.Blocks:
    """The explorer around one shared, read-only model `bundle` (bf16: autocast on CUDA)."""
    # Captures and interventions hook the model's modules for the length of one call; two requests
    # running one model at once would see each other's hooks, so model passes take turns. Rendering
    # from a cached analysis needs no lock and runs concurrently.
    model_lock = threading.Lock()

    def current(session: Session) -> Bundle:
        return session.bundle or bundle

    def need_analysis(session: Session) -> Analysis:
        if session is None or session.analysis is None:
            raise gr.Error("Upload an image (or pick an example) first.")
        return session.analysis

    def layer_choices(b: Bundle):
        return b.config.depth - 1, b.config.heads - 1

    def index_slider(last: int, value: int, **kwargs) -> gr.Slider:
        # A slider needs minimum < maximum: a single layer or head is shown fixed instead.
        return gr.Slider(minimum=0, maximum=max(1, last), value=value, step=1, interactive=last > 0, **kwargs)

    def size_range(b: Bundle) -> dict:
        """Inference-resolution slider range: patch-size steps up to 8x the training size."""
        p, (h, w) = b.config.patch_size, b.preprocess.image_size
        return dict(minimum=p, maximum=max(8 * max(h, w), 4 * p), step=p)

    def head_names(b: Bundle) -> list[str]:
        return [f"L{l}H{i}" for l in range(b.config.depth) for i in range(b.config.heads)]

    def layer_names(b: Bundle) -> list[str]:
        return [f"layer {l}" for l in range(b.config.depth)]

    def class_choices(b: Bundle) -> list[tuple[str, int]]:
        return [(name, i) for i, name in enumerate(b.labels)]

    def model_summary(b: Bundle) -> str:
        c = b.config
        params = sum(p.numel() for p in b.model.parameters())
        notes = "".join(f"\n- note: {n}" for n in b.notes)
        return (f"**{Path(b.source).name or 'random'}**: {params:,} parameters, {c.depth} layers x {c.heads} heads "
                f"(dim_head {c.dim_head}), trained at {c.image_size}px with {c.patch_size}px patches, "
                f"{c.channels} channel(s), rotary {'on' if c.use_rotary else 'off'}, device {b.device}.{notes}")

    # ---- model and image -> one analysis pass -------------------------------------------------------

    @user_errors
    def predict(path, height, width, session: Session | None):
        """One model pass with capture; every panel is then drawn from this cache."""
        session = session or Session()
        if not path:
            raise gr.Error("No image given. Upload, paste or take a picture, or pick an example.")
        b = current(session)
        image = read_image(path)
        with model_lock:
            session.analysis = analyze(b, image, (int(height), int(width)), bf16=bf16)
        session.gradients, session.query = {}, None
        return {name: p for name, p in session.analysis.top(5)}, session

    @user_errors
    def load_model(source, file, image_size, patch_size, channels, use_rotary, dim, depth, heads, dim_head,
                   rand_image, rand_patch, session: Session | None):
        session = Session()
        if source == UPLOADED:
            if file is None:
                raise gr.Error("Choose a checkpoint file (.safetensors, .pt or .pth) first.")
            hints = {k: int(v) for k, v in (("image_size", image_size), ("patch_size", patch_size),
                                             ("channels", channels)) if v}
            session.bundle = load_checkpoint(file, bundle.device, use_rotary=use_rotary, **hints)
        elif source == RANDOM:
            if int(dim_head) % 4:
                raise gr.Error(f"dim_head must be a multiple of 4 (rows and columns get dim_head/4 bands), not {dim_head}")
            if int(rand_image) % int(rand_patch):
                raise gr.Error(f"image size {rand_image} is not a multiple of the patch size {rand_patch}")
            config = RvTConfig(image_size=int(rand_image), patch_size=int(rand_patch), dim=int(dim),
                               depth=int(depth), heads=int(heads), dim_head=int(dim_head),
                               mlp_dim=2 * int(dim), channels=1)
            torch.manual_seed(0)
            model = RvT.from_config(config).to(bundle.device).eval().requires_grad_(False)
            size = (config.image_size, config.image_size)
            session.bundle = Bundle(model=model, labels=bundle.labels if config.num_classes == len(bundle.labels)
                                    else [str(i) for i in range(config.num_classes)], config=config,
                                    preprocess=Preprocess(image_size=size), device=bundle.device,
                                    source="random RvT", notes=["untrained: predictions are meaningless, "
                                                                "attention and rotary show the architecture"])
        b = current(session)
        max_layer, max_head = layer_choices(b)
        h, w = b.preprocess.image_size
        return (session, model_summary(b), gr.Slider(value=h, **size_range(b)), gr.Slider(value=w, **size_range(b)),
                index_slider(max_layer, max_layer), index_slider(max_head, 0),
                gr.CheckboxGroup(choices=head_names(b), value=[]), gr.CheckboxGroup(choices=layer_names(b), value=[]),
                gr.Dropdown(choices=class_choices(b), value=None), gr.Dropdown(choices=class_choices(b), value=None))

    # ---- renderers: no model pass -------------------------------------------------------------------

    @user_errors
    def render_layer(layer, head, shared, session):
        a = need_analysis(session)
        return (panels.heads_panel(a, int(layer), session.query, shared),
                panels.head_overlay(a, int(layer), int(head), session.query), panels.model_panel(a))

    @user_errors
    def render_head(layer, head, session):
        return panels.head_overlay(need_analysis(session), int(layer), int(head), session.query)

    @user_errors
    def pick_query(layer, head, shared, session, evt: gr.SelectData):
        a = need_analysis(session)
        x, y = evt.index
        image_h, image_w = panels.head_overlay(a, 0, 0).size[::-1]
        session.query = (min(int(y * a.grid[0] / image_h), a.grid[0] - 1), min(int(x * a.grid[1] / image_w), a.grid[1] - 1))
        return (*render_layer(layer, head, shared, session), f"Query patch: row {session.query[0]}, "
                f"column {session.query[1]} (click another patch, or reset to CLS)", session)

    @user_errors
    def reset_query(layer, head, shared, session):
        session.query = None
        return (*render_layer(layer, head, shared, session), "Query: CLS token", session)

    @user_errors
    def render_rollout(fusion, discard, target, session):
        a = need_analysis(session)
        plain = panels.rollout_panel(a, fusion, float(discard))
        if target is None:
            return plain, None
        target = int(target)
        if target not in session.gradients:  # one backward pass per class, then cached
            with model_lock:
                session.gradients[target] = attention_gradients(current(session), a, target)
        return plain, panels.rollout_panel(a, fusion, float(discard), session.gradients[target])

    @user_errors
    def render_stats(session):
        return panels.stats_panel(need_analysis(session))

    @user_errors
    def render_rotary(layer, head, session):
        a = need_analysis(session)
        b = current(session)
        query = session.query or (a.grid[0] // 2, a.grid[1] // 2)
        return (panels.bands_panel(a), panels.nyquist_panel(a, b.rotary_scales, b.train_grid),
                panels.kernel_panel(a, int(layer), int(head), query))

    @user_errors
    def run_attribution(method, steps, smooth, target, session, progress=gr.Progress()):
        a = need_analysis(session)
        b = current(session)
        target = int(a.probs.argmax()) if target is None else int(target)
        progress(0.0, desc=f"{method}")
        with model_lock:
            attr = attribute(b.model, a.input.to(b.device), target, method, int(steps), bool(smooth),
                             progress=lambda f: progress(f, desc=method))
        title = f"{method}{' + SmoothGrad' if smooth else ''} for '{a.labels[target]}'"
        return figure_to_image(attribution_figure(a.image, attr.cpu(), title))

    @user_errors
    def run_whatif(heads_off, rotary_off, layer, session):
        a = need_analysis(session)
        off: dict[int, list[int]] = {}
        for item in heads_off or []:
            l, h = item[1:].split("H")
            off.setdefault(int(l), []).append(int(h))
        layers = [int(item.split()[-1]) for item in rotary_off or []]
        if not off and not layers:
            raise gr.Error("Choose at least one head or one layer to switch off.")
        with model_lock:
            whatif = analyze_input(current(session), a.input, a.image, heads_off=off, rotary_off=layers, bf16=bf16)
        before, after = dict(a.top(5)), dict(whatif.top(5))
        lines = ["| class | before | after | change |", "|---|---|---|---|"]
        for name in dict.fromkeys([*before, *after]):
            p0 = float(a.probs[a.labels.index(name)])
            p1 = float(whatif.probs[a.labels.index(name)])
            lines.append(f"| {name} | {p0:.1%} | {p1:.1%} | {p1 - p0:+.1%} |")
        return (after, "\n".join(lines), panels.heads_panel(a, int(layer)),
                panels.heads_panel(whatif, int(layer)))

    @user_errors
    def export(session, progress=gr.Progress()):
        a = need_analysis(session)
        folder = Path(tempfile.mkdtemp(prefix="rvt-lens-"))
        with model_lock:
            write_report(a, current(session), folder / "report", progress=lambda f, what: progress(f, desc=what))
        return shutil.make_archive(str(folder / "rvt-lens-report"), "zip", folder / "report")

    # ---- layout ---------------------------------------------------------------------------------------

    h0, w0 = bundle.preprocess.image_size
    with gr.Blocks(title="RvT Lens") as demo:
        session = gr.State(None)
        gr.Markdown("# RvT Lens\nWhat a **Rotary Vision Transformer** looks at, and what its rotary position "
                    "embedding does. Upload an image or pick an example; everything below is drawn from one "
                    "model pass.")
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                image = checked_image(sources=["upload", "clipboard", "webcam"], type="filepath", label="Image", elem_id="input-img",
                                     height=300)
                if EXAMPLES:
                    gr.Examples([[str(p)] for p in EXAMPLES], inputs=[image], label="Fashion-MNIST test images",
                                examples_per_page=10)
                label = gr.Label(num_top_classes=5, label="Prediction")
                with gr.Accordion("Inference resolution", open=False):
                    gr.Markdown("Rotary embeddings have no fixed table, so the same model runs at other sizes "
                                "(multiples of the patch size, non-square too).")
                    height = gr.Slider(value=h0, label="height (px)", **size_range(bundle))
                    width = gr.Slider(value=w0, label="width (px)", **size_range(bundle))
                with gr.Accordion("Model", open=False):
                    model_info = gr.Markdown(model_summary(bundle))
                    source = gr.Radio([BUNDLED, UPLOADED, RANDOM], value=BUNDLED, label="model")
                    ckpt = gr.File(label="checkpoint (.safetensors, or a vit-pytorch state_dict .pt/.pth)",
                                   file_types=[".safetensors", ".pt", ".pth"], type="filepath")
                    with gr.Row():
                        hint_size = gr.Number(label="image_size (if asked)", precision=0, value=None)
                        hint_patch = gr.Number(label="patch_size (if asked)", precision=0, value=None)
                        hint_channels = gr.Number(label="channels (if asked)", precision=0, value=None)
                    hint_rotary = gr.Checkbox(value=True, label="use_rotary (not stored in a state_dict)")
                    with gr.Row():
                        r_dim = gr.Slider(16, 256, value=64, step=16, label="random: dim")
                        r_depth = gr.Slider(1, 12, value=4, step=1, label="depth")
                        r_heads = gr.Slider(1, 8, value=4, step=1, label="heads")
                    with gr.Row():
                        r_dim_head = gr.Slider(4, 64, value=16, step=4, label="dim_head")
                        r_image = gr.Slider(8, 224, value=28, step=4, label="image size")
                        r_patch = gr.Slider(2, 32, value=4, step=1, label="patch size")
                    load = gr.Button("Load model")
            with gr.Column(scale=2):
                with gr.Tabs():
                    with gr.Tab("Attention"):
                        gr.Markdown(EXPLAIN["attention"])
                        with gr.Row():
                            max_layer, max_head = layer_choices(bundle)
                            layer = index_slider(max_layer, max_layer, label="layer", elem_id="layer")
                            head = index_slider(max_head, 0, label="head", elem_id="head")
                            shared = gr.Checkbox(value=True, label="one colour scale for all heads")
                        heads_img = gr.Image(label="all heads of the layer", show_label=False, elem_id="heads-img", interactive=False, format="png", buttons=["download"])
                        with gr.Row():
                            head_img = gr.Image(label="one head: click a patch to use it as the query", elem_id="head-img",
                                                interactive=False, format="png", height=300)
                            model_img = gr.Image(label="whole model", show_label=False, interactive=False, format="png", height=300)
                        with gr.Row():
                            query_info = gr.Markdown("Query: CLS token")
                            reset = gr.Button("Reset query to CLS", size="sm")
                    with gr.Tab("Rollout"):
                        gr.Markdown(EXPLAIN["rollout"])
                        with gr.Row():
                            fusion = gr.Radio(list(FUSIONS), value="mean", label="head fusion")
                            discard = gr.Slider(0.0, 0.95, value=0.0, step=0.05, label="discard ratio")
                            target = gr.Dropdown(class_choices(bundle), value=None,
                                                 label="class for gradient rollout")
                        with gr.Row():
                            rollout_img = gr.Image(label="attention rollout (CLS)", elem_id="rollout-img", interactive=False, format="png")
                            grad_img = gr.Image(label="gradient rollout (choose a class above)", interactive=False, format="png")
                    with gr.Tab("Head statistics") as stats_tab:
                        gr.Markdown(EXPLAIN["stats"])
                        stats_img = gr.Image(label="head statistics", show_label=False, elem_id="stats-img", interactive=False, format="png")
                    with gr.Tab("Rotary") as rotary_tab:
                        gr.Markdown(EXPLAIN["rotary"])
                        kernel_img = gr.Image(label="relative-position kernel (layer and head from the attention tab)", show_label=False, elem_id="kernel-img",
                                              interactive=False, format="png")
                        nyquist_img = gr.Image(label="phase step per patch vs Nyquist", show_label=False, interactive=False, format="png")
                        bands_img = gr.Image(label="frequency bands over the grid", show_label=False, interactive=False, format="png")
                    with gr.Tab("Attributions"):
                        gr.Markdown(EXPLAIN["attributions"])
                        with gr.Row():
                            method = gr.Dropdown(list(METHODS), value=METHODS[0], label="method")
                            steps = gr.Slider(4, 128, value=32, step=4, label="steps / samples")
                            smooth = gr.Checkbox(value=False, label="SmoothGrad (noise tunnel)")
                            attr_target = gr.Dropdown(class_choices(bundle), value=None,
                                                      label="class (default: predicted)")
                        attr_btn = gr.Button("Compute attribution", variant="primary")
                        attr_img = gr.Image(label="attribution", show_label=False, elem_id="attr-img", interactive=False, format="png")
                    with gr.Tab("What-if"):
                        gr.Markdown(EXPLAIN["whatif"])
                        heads_off = gr.CheckboxGroup(head_names(bundle), label="switch off heads (layer, head)")
                        rotary_off = gr.CheckboxGroup(layer_names(bundle), label="switch off rotary in layers")
                        whatif_btn = gr.Button("Re-run with these switched off", variant="primary")
                        with gr.Row():
                            whatif_label = gr.Label(num_top_classes=5, label="prediction after")
                            whatif_table = gr.Markdown()
                        gr.Markdown("Attention before (layer from the attention tab):")
                        before_img = gr.Image(show_label=False, interactive=False, format="png")
                        gr.Markdown("Attention after:")
                        after_img = gr.Image(show_label=False, interactive=False, format="png")
                    with gr.Tab("Export"):
                        gr.Markdown(EXPLAIN["export"])
                        export_btn = gr.Button("Build the zip")
                        export_file = gr.File(label="report")

        # ---- events: every one has an api_name ---------------------------------------------------------
        layer_outputs = [heads_img, head_img, model_img]
        analysis_inputs = [image, height, width, session]
        for trigger, name in ((image.change, "predict"), (height.release, "resize_h"), (width.release, "resize_w")):
            trigger(predict, analysis_inputs, [label, session], api_name=name).then(
                render_layer, [layer, head, shared, session], layer_outputs, api_name=f"{name}_panels").then(
                render_rollout, [fusion, discard, target, session], [rollout_img, grad_img], api_name=f"{name}_rollout")
        load.click(load_model, [source, ckpt, hint_size, hint_patch, hint_channels, hint_rotary, r_dim, r_depth,
                                r_heads, r_dim_head, r_image, r_patch, session],
                   [session, model_info, height, width, layer, head, heads_off, rotary_off, target, attr_target],
                   api_name="load_model").then(
            predict, analysis_inputs, [label, session], api_name="load_model_predict").then(
            render_layer, [layer, head, shared, session], layer_outputs, api_name="load_model_panels")
        layer.change(render_layer, [layer, head, shared, session], layer_outputs, api_name="layer",
                     trigger_mode="always_last")
        shared.change(render_layer, [layer, head, shared, session], layer_outputs, api_name="shared_scale")
        head.change(render_head, [layer, head, session], head_img, api_name="head", trigger_mode="always_last")
        head_img.select(pick_query, [layer, head, shared, session], [*layer_outputs, query_info, session],
                        api_name="pick_query")
        reset.click(reset_query, [layer, head, shared, session], [*layer_outputs, query_info, session],
                    api_name="reset_query")
        for control in (fusion, target):
            control.change(render_rollout, [fusion, discard, target, session], [rollout_img, grad_img],
                           api_name=f"rollout_{'fusion' if control is fusion else 'class'}")
        discard.release(render_rollout, [fusion, discard, target, session], [rollout_img, grad_img],
                        api_name="rollout_discard")
        stats_tab.select(render_stats, [session], stats_img, api_name="stats")
        rotary_tab.select(render_rotary, [layer, head, session], [bands_img, nyquist_img, kernel_img],
                          api_name="rotary")
        attr_btn.click(run_attribution, [method, steps, smooth, attr_target, session], attr_img,
                       api_name="attribution")
        whatif_btn.click(run_whatif, [heads_off, rotary_off, layer, session],
                         [whatif_label, whatif_table, before_img, after_img], api_name="whatif")
        export_btn.click(export, [session], export_file, api_name="export")
    return demo


THEME_FONTS = dict(font=["ui-sans-serif", "system-ui", "sans-serif"],
                   font_mono=["ui-monospace", "Consolas", "monospace"])  # local fonts only: works air-gapped


def launch(demo: gr.Blocks, host: str, port: int, **kwargs):
    """Launch with the project's limits: bounded queue, capped uploads, no share link."""
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo.launch(server_name=host, server_port=port, share=False, max_file_size="20mb",
                       theme=gr.themes.Default(**THEME_FONTS), show_error=True, **kwargs)


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--host", default=env("RVT_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("RVT_PORT", "7860")))
    p.add_argument("--checkpoint", type=Path, default=Path(env("RVT_CHECKPOINT", str(DEFAULT_CHECKPOINT))))
    p.add_argument("--device", default=env("RVT_DEVICE", "auto"), help=f"one of {', '.join(DEVICE_CHOICES)}")
    p.add_argument("--bf16", action="store_true", default=env("RVT_BF16", "") == "1",
                   help="bf16 autocast for the model pass on CUDA (ignored elsewhere)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    launch(build_app(load_checkpoint(args.checkpoint, pick_device(args.device)), args.bf16), args.host, args.port)

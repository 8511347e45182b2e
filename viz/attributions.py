"""Captum attributions on the input pixels against a stated baseline, with progress reported as examples evaluated.

A baseline is the input that stands for "nothing here": Integrated Gradients integrates from it to
the input (its scores add up to logit(input) - logit(baseline)), GradientShap samples between it and
the input, Occlusion pastes its pixels over each window. Which one is a choice with consequences:
against a flat grey, the black background of a Fashion-MNIST image counts as evidence.
"""
from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from matplotlib.figure import Figure
from PIL import Image, ImageFilter

from rvt.preprocess import Preprocess

from .render import colorize, lut, new_figure
from .sheet import WIDTH, Sheet

METHODS = ("Integrated Gradients", "Saliency", "Occlusion", "GradientShap")
BASELINES = ("black", "blur", "mean", "noise")
NOISE_TYPES = ("smoothgrad", "smoothgrad_sq", "vargrad")  # captum NoiseTunnel's reductions of the noisy maps
SMOOTH_COPIES = 8  # noisy copies per SmoothGrad map: the app's and the scorecard's count
SMOOTH_STDEV = 0.15  # their noise in normalised units: 5% of the pixel range at Fashion-MNIST's std 0.353


class _Counted:
    """Wraps the model so every forward reports how many examples have been evaluated so far."""

    def __init__(self, model: torch.nn.Module, total: int, progress: Callable[[float], None] | None,
                 check: Callable[[], None] | None):
        self.model, self.total, self.progress, self.check, self.done = model, max(1, total), progress, check, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.check is not None:
            self.check()
        out = self.model(x)
        self.done += x.shape[0]
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total))
        return out


def _stats(preprocess: Preprocess, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(preprocess.mean, dtype=x.dtype, device=x.device)[:, None, None]
    std = torch.tensor(preprocess.std, dtype=x.dtype, device=x.device)[:, None, None]
    return mean, std


def blur_sigma(image_hw: tuple[int, int]) -> float:
    """The blur baseline's Gaussian sigma in pixels: a seventh of the shorter side (4 px at 28x28)."""
    return max(1.0, min(image_hw) / 7)


def baseline_input(x: torch.Tensor, baseline: str, preprocess: Preprocess, samples: int = 1,
                   seed: int = 0) -> torch.Tensor:
    """The model input (samples, C, H, W) standing for "nothing" beside a normalised input x (1, C, H, W).

    black: a black image, the model input preprocess.normalize(0) (Fashion-MNIST's background);
    blur: x blurred with a Gaussian of `blur_sigma` (Pillow, on the 8-bit image);
    mean: a flat image at the training set's mean intensity (normalised, that is 0);
    noise: uniform noise over [0, 1] in pixel units, a fresh draw per sample from `seed`.
    Only "noise" differs between samples.
    """
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}")
    if not isinstance(preprocess, Preprocess):
        raise TypeError(f"preprocess must be the checkpoint's Preprocess (it holds the normalisation), "
                        f"not {type(preprocess).__name__}")
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != len(preprocess.mean):
        raise ValueError(f"expected one normalised image (1, {len(preprocess.mean)}, H, W), got {tuple(x.shape)}")
    return _baseline_input(x.detach(), baseline, preprocess, samples, seed)


def _baseline_input(x, baseline, preprocess, samples, seed):
    mean, std = _stats(preprocess, x)
    if baseline == "black":
        unit = torch.zeros_like(x)
    elif baseline == "mean":
        unit = mean.expand_as(x[0])[None]
    elif baseline == "noise":
        generator = torch.Generator().manual_seed(seed)
        unit = torch.rand((samples, *x.shape[1:]), generator=generator).to(x)
    else:
        pixels = ((x[0] * std + mean).clamp(0, 1) * 255).round().byte().cpu().numpy()  # (C, H, W)
        image = Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0))
        blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(blur_sigma(x.shape[-2:]))), np.float32) / 255
        unit = torch.from_numpy(blurred[None] if blurred.ndim == 2 else blurred.transpose(2, 0, 1))[None].to(x)
    normalised = (unit - mean) / std
    return normalised if baseline == "noise" else normalised.expand(samples, -1, -1, -1).contiguous()


def describe_baseline(baseline: str, preprocess: Preprocess, image_hw: tuple[int, int] = (28, 28)) -> str:
    """What the baseline is, in words, e.g. for the text under an attribution."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}")
    grey = "/".join(f"{round(m * 255)}" for m in preprocess.mean)
    return {
        "black": "a black image (the dataset's background)",
        "blur": f"the input blurred (Gaussian, sigma {blur_sigma(image_hw):.0f} px)",
        "mean": f"a flat grey at the training set's mean intensity ({grey}/255)",
        "noise": "uniform noise over the pixel range (seeded)",
    }[baseline]


def describe(method: str, baseline: str, preprocess: Preprocess, noise_tunnel: bool | str = False,
             image_hw: tuple[int, int] = (28, 28), steps: int | None = None) -> str:
    """One line naming what `attribute(method, steps, noise_tunnel, baseline=...)` computed, for the UI.

    steps: the steps the visitor chose (then the text also says where they do not apply); None: the
    default of `attribute`."""
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(METHODS)}")
    what = describe_baseline(baseline, preprocess, image_hw)
    side, stride = occlusion_window(image_hw)
    unused = "; the steps do not apply" if steps is not None else ""
    steps = 32 if steps is None else steps  # attribute's default
    nt_type = _noise_type(noise_tunnel)
    over_copies = " (with SmoothGrad: its mean over the noisy copies)" if nt_type else ""
    text = {
        "Integrated Gradients": f"Integrated Gradients from {what} to the input, {steps} steps: the scores add up "
                                f"to the class logit of the input{over_copies} minus that of the baseline, up to "
                                f"the integration error, which shrinks as the steps grow.",
        "Saliency": f"Saliency: the gradient of the class logit at the input (no baseline{unused}).",
        "Occlusion": f"Occlusion, {side} px windows every {stride} px: each window replaced by {what}; a score is "
                     f"the drop of the class logit (averaged where windows overlap{unused}).",
        "GradientShap": f"GradientShap, {steps} samples: gradients at random points between {what} and the "
                        f"noised input, times their distance.",
    }[method]
    if nt_type is not None:
        copies = f"{SMOOTH_COPIES} noisy copies of the input"
        text += {"smoothgrad": f" Averaged over {copies} (SmoothGrad).",
                 "smoothgrad_sq": f" Mean square over {copies} (SmoothGrad squared).",
                 "vargrad": f" Variance over {copies} (VarGrad)."}[nt_type]
        if method == "Integrated Gradients" and nt_type == "smoothgrad":
            nodes = smooth_nodes(steps)
            rounded = f" ({steps} steps rounded up to a multiple of {SMOOTH_COPIES}, at least " \
                      f"{smooth_nodes(1)})" if nodes != steps else ""
            text += (f" The copies share {nodes} points along the path{rounded}, each taking every "
                     f"{SMOOTH_COPIES}th: as many gradients as Integrated Gradients with {nodes} steps.")
    return text


def _noise_type(noise_tunnel: bool | str) -> str | None:
    if noise_tunnel is True:
        return "smoothgrad"
    if noise_tunnel is False or noise_tunnel is None:
        return None
    if noise_tunnel not in NOISE_TYPES:
        raise ValueError(f"noise_tunnel must be True, False or one of {', '.join(NOISE_TYPES)}, not {noise_tunnel!r}")
    return noise_tunnel


def attribute(model: torch.nn.Module, x: torch.Tensor, target: int, method: str = "Integrated Gradients",
              steps: int = 32, noise_tunnel: bool | str = False, batch_size: int = 64,
              progress: Callable[[float], None] | None = None, *, baseline: str = "black",
              preprocess: Preprocess | None = None, occlusion: tuple[int, int] | None = None,
              check: Callable[[], None] | None = None) -> torch.Tensor:
    """Attribution (1, C, H, W) of class `target` for a single normalised input x (1, C, H, W).

    steps: IG interpolation steps / GradientShap samples. baseline: see `baseline_input`; it needs
    the checkpoint's `preprocess` to know what black is (default: `Preprocess()`, Fashion-MNIST's
    normalisation). occlusion: (window side, stride) in pixels, default about a seventh of the side
    with half-window strides. noise_tunnel: True (SmoothGrad) or a NoiseTunnel type averages over
    SMOOTH_COPIES noisy copies of x with captum's NoiseTunnel, except IG with SmoothGrad, whose copies
    share the path's `smooth_nodes(steps)` points (`_shared_grid_smoothgrad`).
    check: called before every model pass; it raises to cancel.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(METHODS)}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {tuple(x.shape)}")
    if not 1 <= steps <= 512:
        raise ValueError(f"steps must be between 1 and 512, not {steps}")
    if occlusion is not None and not 1 <= occlusion[1] <= occlusion[0] <= min(x.shape[-2:]):
        raise ValueError(f"occlusion (window, stride) {occlusion} must satisfy 1 <= stride <= window <= image side")
    nt_type = _noise_type(noise_tunnel)
    reference = baseline_input(x, baseline, preprocess or Preprocess(), samples=8 if baseline == "noise" else 1)
    x = x.detach().clone().requires_grad_(True)  # attributions are w.r.t. this input, never the caller's tensor
    return _attribute(model, x, target, method, steps, nt_type, batch_size, progress, reference, occlusion, check)


def occlusion_window(image_hw: tuple[int, int]) -> tuple[int, int]:
    """Occlusion's default (window side, stride) in pixels: windows a seventh of the shorter side, moved by
    half a window (about 13 x 13 positions whatever the resolution)."""
    side = max(2, min(image_hw) // 7)
    return side, max(1, side // 2)


def _occlusion_window(x: torch.Tensor, occlusion: tuple[int, int] | None):
    side, stride = occlusion or occlusion_window(tuple(x.shape[-2:]))
    return (x.shape[1], side, side), (x.shape[1], stride, stride)


class _BatchedGradientShap(GradientShap):
    """GradientShap that draws and differentiates its n_samples `batch` at a time (captum's runs them
    all in one batch, so memory grows with the sample count) and averages the chunks by their size."""

    def __init__(self, forward_func, batch: int):
        super().__init__(forward_func)
        self.batch = batch

    def attribute(self, inputs, baselines, n_samples=5, **kwargs):
        total = None
        for start in range(0, n_samples, self.batch):
            n = min(self.batch, n_samples - start)
            part = super().attribute(inputs, baselines, n_samples=n, **kwargs) * n
            total = part if total is None else total + part
        return total / n_samples

    attribute.__wrapped__ = attribute  # NoiseTunnel calls the undecorated method through __wrapped__, as captum's are


def smooth_nodes(steps: int, copies: int = SMOOTH_COPIES) -> int:
    """How many gradients Integrated Gradients + SmoothGrad evaluates for `steps`: `steps` rounded up to a
    multiple of the noisy copies, which share them (see `_shared_grid_smoothgrad`), and at least two per
    copy (captum's Riemann rules take two points or more)."""
    return copies * max(2, -(-steps // copies))


def _shared_grid_smoothgrad(forward, x, target, baseline, steps, batch_size, copies=SMOOTH_COPIES,
                            stdev=SMOOTH_STDEV, seed=0):
    """SmoothGrad of Integrated Gradients at the cost of Integrated Gradients alone: the mean over `copies`
    noisy inputs x + N(0, stdev) of IG from `baseline`, where the copies share one midpoint rule of
    `smooth_nodes(steps)` nodes along the path, copy k taking nodes k, k + copies, k + 2 copies, ...

    Captum's NoiseTunnel gives every copy all `steps` nodes (copies x steps passes). Averaged over the
    copies, interleaved nodes integrate as finely as the full rule while each copy costs steps / copies:
    measured against a 128-copy x 32-node reference at 28 px (benchmarks/attributions.py), 8 copies sharing
    32 nodes come about as close as NoiseTunnel's 8 x 32 (relative L2 0.30 against 0.27; two NoiseTunnel
    draws differ by 0.29). A copy's own map is a coarse estimate, so the squared
    and variance reductions, which need each copy's map, stay with NoiseTunnel. Noise is drawn from `seed`.
    """
    per = smooth_nodes(steps, copies) // copies
    generator = torch.Generator().manual_seed(seed)
    noise = stdev * torch.randn((copies, *x.shape[1:]), generator=generator).to(x)  # (copies, C, H, W)
    total = torch.zeros_like(x)
    for k in range(copies):
        noisy = (x.detach() + noise[k:k + 1]).requires_grad_(True)
        # captum's riemann_left evaluates baseline + j/per of the path; shifting the forward's input by
        # (k + 0.5) / (copies * per) of the path moves copy k onto its nodes of the shared midpoint rule.
        shift = (k + 0.5) / (copies * per) * (noisy.detach() - baseline)
        ig = IntegratedGradients(lambda z, shift=shift: forward(z + shift))
        total += ig.attribute(noisy, baselines=baseline, target=target, n_steps=per, method="riemann_left",
                              internal_batch_size=batch_size).detach()
    return total / copies


def _attribute(model, x, target, method, steps, nt_type, batch_size, progress, reference, occlusion, check):
    single = reference[:1]  # IG and Occlusion take one baseline; GradientShap samples from all of them
    if method == "Integrated Gradients" and nt_type == "smoothgrad":
        counted = _Counted(model, smooth_nodes(steps), progress, check)
        with torch.enable_grad():
            result = _shared_grid_smoothgrad(counted, x, target, single, steps, batch_size)
        if progress is not None:
            progress(1.0)
        return result
    if method == "Integrated Gradients":
        total, kwargs = steps, {"baselines": single, "n_steps": steps, "internal_batch_size": batch_size}
    elif method == "Saliency":
        total, kwargs = 1, {"abs": False}
    elif method == "GradientShap":
        # NoiseTunnel expands inputs per sample and accepts a single baseline only.
        total, kwargs = steps, {"baselines": single if nt_type else reference, "n_samples": steps, "stdevs": 0.1}
    else:
        window, stride = _occlusion_window(x, occlusion)
        # captum's count per axis: a last window flush with the far edge where the stride does not divide the rest
        windows = math.prod(-(-(n - w) // s) + 1 for n, w, s in zip(x.shape[-2:], window[1:], stride[1:]))
        total, kwargs = windows + 1, {"sliding_window_shapes": window, "strides": stride,
                                      "baselines": single, "perturbations_per_eval": batch_size}
    counted = _Counted(model, total * (SMOOTH_COPIES if nt_type else 1), progress, check)
    algorithm = {"Integrated Gradients": IntegratedGradients, "Saliency": Saliency,
                 "GradientShap": functools.partial(_BatchedGradientShap, batch=batch_size),
                 "Occlusion": Occlusion}[method](counted)
    if nt_type:
        algorithm = NoiseTunnel(algorithm)
        # NoiseTunnel owns the `stdevs` keyword: its input noise replaces GradientShap's.
        kwargs.update(nt_type=nt_type, nt_samples=SMOOTH_COPIES, stdevs=SMOOTH_STDEV,
                      nt_samples_batch_size=SMOOTH_COPIES if method == "Saliency" else 1)
    with torch.enable_grad():
        result = algorithm.attribute(x, target=target, **kwargs)
    if progress is not None:
        progress(1.0)
    return result.detach()


def smoothgrad_maps(model: torch.nn.Module, x: torch.Tensor, target: int, samples: int = SMOOTH_COPIES,
                    stdev: float = SMOOTH_STDEV, seed: int = 0) -> dict[str, torch.Tensor]:
    """SmoothGrad, SmoothGrad squared and VarGrad of the Saliency gradient, each (1, C, H, W).

    What captum's NoiseTunnel computes for each type, from one batch of `samples` noisy copies of x
    (Gaussian noise of `stdev`, normalised units, drawn from `seed`) shared by the three reductions.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {tuple(x.shape)}")
    if samples < 2:
        raise ValueError(f"samples must be at least 2 (VarGrad is a variance), not {samples}")
    generator = torch.Generator().manual_seed(seed)
    noisy = x.detach() + stdev * torch.randn((samples, *x.shape[1:]), generator=generator).to(x)  # (S, C, H, W)
    with torch.enable_grad():
        grads = Saliency(model).attribute(noisy.requires_grad_(True), target=target, abs=False).detach()
    mean = grads.mean(0, keepdim=True)
    squares = (grads ** 2).mean(0, keepdim=True)
    return {"smoothgrad": mean, "smoothgrad_sq": squares, "vargrad": squares - mean ** 2}


def _signed_map(attribution: torch.Tensor) -> tuple[np.ndarray, float]:
    """The (H, W) map with channels summed and the colour scale's half-width (its largest magnitude)."""
    signed = attribution[0].sum(0).float().numpy()
    return signed, float(np.abs(signed).max()) or 1.0


def attribution_image(image: np.ndarray, attribution: torch.Tensor, title: str, note: str = "") -> Image.Image:
    """`attribution_figure` drawn with Pillow for the page (a few ms instead of ~175 ms): the input, the
    signed attribution on a symmetric red-blue scale with its colour bar, and the positive evidence in
    inferno over the input (where the score is above zero, 60% opaque) with its scale under it, each
    panel 200 px."""
    signed, limit = _signed_map(attribution)
    rgb = image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=-1)
    positive = np.clip(signed, 0, None)
    alpha = 0.6 * (positive > 0)[..., None]
    evidence = (rgb * (1 - alpha) + colorize(positive, "inferno", 0, limit) * alpha).round().astype(np.uint8)
    side = 200
    h, w = signed.shape
    box = (round(side * w / max(h, w)), round(side * h / max(h, w)))  # the map's aspect, longer side 200 px
    sheet = Sheet(84 + box[1] + (16 * len(textwrap.wrap(note, 110)) + 10 if note else 6))
    sheet.text((WIDTH / 2, 8), title, 14, anchor="ma")
    top = 52
    panels = (("input", rgb), ("attribution (red: for, blue: against)", None), ("evidence for the class", evidence))
    for i, (caption, pixels) in enumerate(panels):
        x = (15, 245, 495)[i]  # room for the colour bar's labels after the middle panel
        sheet.text((x + box[0] / 2, top - 6), caption, 11, anchor="mb")
        if pixels is None:
            sheet.heat((x, top, *box), signed, "RdBu_r", -limit, limit)
            sheet.colorbar((x + box[0] + 4, top, 8, box[1]), "RdBu_r", -limit, limit)
        else:
            sheet.image.paste(Image.fromarray(pixels).resize(box, Image.Resampling.NEAREST), (x, top))
    strip = lut("inferno")[np.linspace(0, 255, box[0]).round().astype(int)][None].repeat(8, axis=0)
    sheet.image.paste(Image.fromarray(np.ascontiguousarray(strip)), (495, top + box[1] + 4))
    sheet.text((495, top + box[1] + 14), "0", 10)
    sheet.text((495 + box[0], top + box[1] + 14), f"{limit:.2g}", 10, anchor="ra")
    if note:
        sheet.paragraph((15, top + box[1] + 30), note, 110, 11)
    return sheet.image


def attribution_figure(image: np.ndarray, attribution: torch.Tensor, title: str, note: str = "") -> Figure:
    """Input, signed attribution (red for, blue against the class), and positive evidence overlaid; the
    matplotlib version, for export (`attribution_image` is the page's).

    note: a line under the panels, e.g. `describe(...)`, so the picture names its baseline.
    """
    signed, limit = _signed_map(attribution)
    positive = np.clip(signed, 0, None)
    fig = new_figure(9.5, 3.4 if not note else 3.7)
    ax_in, ax_signed, ax_over = fig.subplots(1, 3)
    ax_in.imshow(image, interpolation="nearest")
    ax_in.set_title("input", fontsize=9)
    im = ax_signed.imshow(signed, cmap="RdBu_r", vmin=-limit, vmax=limit, interpolation="nearest")
    ax_signed.set_title("attribution (red: for, blue: against)", fontsize=9)
    fig.colorbar(im, ax=ax_signed, shrink=0.8)
    ax_over.imshow(image, interpolation="nearest")
    ax_over.imshow(positive, cmap="inferno", alpha=0.6 * (positive > 0), vmin=0, vmax=limit, interpolation="nearest")
    ax_over.set_title("evidence for the class", fontsize=9)
    for ax in (ax_in, ax_signed, ax_over):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    if note:
        fig.supxlabel(note, fontsize=8, wrap=True)
    return fig

"""Captum attributions on the input pixels, with progress reported as examples evaluated."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from captum.attr import GradientShap, IntegratedGradients, NoiseTunnel, Occlusion, Saliency
from matplotlib.figure import Figure

from .render import new_figure

METHODS = ("Integrated Gradients", "Saliency", "Occlusion", "GradientShap")


class _Counted:
    """Wraps the model so every forward reports how many examples have been evaluated so far."""

    def __init__(self, model: torch.nn.Module, total: int, progress: Callable[[float], None] | None):
        self.model, self.total, self.progress, self.done = model, max(1, total), progress, 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x)
        self.done += x.shape[0]
        if self.progress is not None:
            self.progress(min(1.0, self.done / self.total))
        return out


def attribute(model: torch.nn.Module, x: torch.Tensor, target: int, method: str = "Integrated Gradients",
              steps: int = 32, noise_tunnel: bool = False, batch_size: int = 64,
              progress: Callable[[float], None] | None = None) -> torch.Tensor:
    """Attribution (1, C, H, W) of class `target` for a single input x (1, C, H, W).

    steps: IG interpolation steps / GradientShap samples. The baseline is the all-zero input, which
    after normalisation is the training set's mean image. Occlusion slides a window of about a
    seventh of the image side with half-window strides; noise_tunnel wraps the method in SmoothGrad.
    """
    if method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}: choose one of {', '.join(METHODS)}")
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one image (1, C, H, W), got {tuple(x.shape)}")
    if not 1 <= steps <= 512:
        raise ValueError(f"steps must be between 1 and 512, not {steps}")
    x = x.detach().clone().requires_grad_(True)  # attributions are w.r.t. this input, never the caller's tensor
    return _attribute(model, x, target, method, steps, noise_tunnel, batch_size, progress)


def _occlusion_window(x: torch.Tensor) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    side = max(2, min(x.shape[-2:]) // 7)  # about a 7x7 sweep, whatever the resolution
    stride = max(1, side // 2)
    return (x.shape[1], side, side), (x.shape[1], stride, stride)


def _attribute(model, x, target, method, steps, noise_tunnel, batch_size, progress):
    nt_samples = 8
    baseline = torch.zeros_like(x)
    if method == "Integrated Gradients":
        total, kwargs = steps, {"baselines": baseline, "n_steps": steps, "internal_batch_size": batch_size}
    elif method == "Saliency":
        total, kwargs = 1, {"abs": False}
    elif method == "GradientShap":
        # A distribution of baselines (zero and a half-dimmed input), unless SmoothGrad wraps it:
        # NoiseTunnel expands inputs per sample and accepts a single baseline only.
        baselines = baseline if noise_tunnel else torch.cat([baseline, x * 0.5])
        total, kwargs = steps, {"baselines": baselines, "n_samples": steps, "stdevs": 0.1}
    else:
        window, stride = _occlusion_window(x)
        windows = ((x.shape[-2] - window[1]) // stride[1] + 1) * ((x.shape[-1] - window[2]) // stride[2] + 1)
        total, kwargs = windows + 1, {"sliding_window_shapes": window, "strides": stride,
                                      "baselines": 0.0, "perturbations_per_eval": batch_size}
    counted = _Counted(model, total * (nt_samples if noise_tunnel else 1), progress)
    algorithm = {"Integrated Gradients": IntegratedGradients, "Saliency": Saliency,
                 "GradientShap": GradientShap, "Occlusion": Occlusion}[method](counted)
    if noise_tunnel:
        algorithm = NoiseTunnel(algorithm)
        # NoiseTunnel owns the `stdevs` keyword: its input noise replaces GradientShap's.
        kwargs.update(nt_type="smoothgrad", nt_samples=nt_samples, nt_samples_batch_size=1, stdevs=0.15)
    with torch.enable_grad():
        result = algorithm.attribute(x, target=target, **kwargs)
    if progress is not None:
        progress(1.0)
    return result.detach()


def attribution_figure(image: np.ndarray, attribution: torch.Tensor, title: str) -> Figure:
    """Input, signed attribution (red for, blue against the class), and positive evidence overlaid."""
    signed = attribution[0].sum(0).float().numpy()  # (H, W): channels summed
    limit = float(np.abs(signed).max()) or 1.0
    positive = np.clip(signed, 0, None)
    fig = new_figure(9.5, 3.4)
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
    return fig

"""Every explanation method's map for one model and input, with the passes they can share shared.

A map is a tensor per image: patch methods give (B, h, w) (attention rollout, gradient rollout,
the last layer's CLS attention, the random floor), pixel methods (B, C, H, W) (captum's). The
rollouts, the CLS attention and gradient rollout all come from one captured forward and backward.
"""
from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from einops import reduce
from torch import nn

from viz.attributions import METHODS as CAPTUM_METHODS
from viz.attributions import SMOOTH_COPIES, SMOOTH_STDEV, attribute, smoothgrad_maps
from viz.rollout import FUSIONS, attention_rollout, cls_relevance, gradient_rollout

from ..capture import capture
from ..grid import patch_grid, tokens_to_grid
from ..preprocess import Preprocess

ROLLOUTS = {f"Attention rollout ({fusion})": fusion for fusion in FUSIONS}
ATTENTION_METHODS = (*ROLLOUTS, "Gradient rollout", "CLS attention (last layer)")
SMOOTHGRAD = {"SmoothGrad": "smoothgrad", "SmoothGrad squared": "smoothgrad_sq", "VarGrad": "vargrad"}
RANDOM = "random"
ALL_METHODS = (*ATTENTION_METHODS, *CAPTUM_METHODS, *SMOOTHGRAD, RANDOM)
# A gradient's sign says which way to move a pixel, not whether it is evidence: rank those by |value|.
MAGNITUDE = frozenset({"Saliency", "SmoothGrad"})
# Methods that cost one model pass per input, so captum's sensitivity (which re-explains noisy copies) is cheap.
SINGLE_PASS = frozenset({*ATTENTION_METHODS, "Saliency", RANDOM})

Explainer = Callable[[nn.Module, torch.Tensor, int], torch.Tensor]
"""A further method: (model, x (1, C, H, W), target) -> map (h, w) per patch or (C, H, W) / (H, W) per pixel."""


@dataclass(frozen=True)
class MapSettings:
    baseline: str = "black"  # IG, GradientShap and Occlusion start from the dataset's background (issue 8)
    ig_steps: int = 16  # ranks of |IG| are stable by 16 steps; the randomisation cascade runs it once per stage
    shap_samples: int = 8  # GradientShap draws, as many as SmoothGrad's
    smooth_samples: int = SMOOTH_COPIES  # the app's SmoothGrad copies
    smooth_stdev: float = SMOOTH_STDEV  # and their noise
    seed: int = 0  # noise draws, the random map and the randomised weights
    batch_size: int = 128  # images per model pass


def tensor_key(*tensors: torch.Tensor, salt: str = "") -> str:
    """A content hash of tensors (shapes, dtypes and bytes), for caches keyed by inputs or weights."""
    digest = hashlib.blake2b(salt.encode(), digest_size=16)
    for t in tensors:
        t = t.detach().cpu().contiguous()
        digest.update(f"{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def patch_scores(explanation: torch.Tensor, patch_size: int, magnitude: bool = False) -> torch.Tensor:
    """A map (B, h, w) or (B, C, H, W) -> (B, h*w) one score per patch, row-major (pixels summed per patch)."""
    if explanation.dim() == 3:
        return (explanation.abs() if magnitude else explanation).flatten(1)
    if explanation.dim() != 4:
        raise ValueError(f"expected a patch map (B, h, w) or a pixel map (B, C, H, W), got {tuple(explanation.shape)}")
    patch_grid(explanation.shape[-2:], patch_size)
    values = explanation.abs() if magnitude else explanation
    return reduce(values, "b c (h p1) (w p2) -> b (h w)", "sum", p1=patch_size, p2=patch_size)


def pixel_attribution(explanation: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """A map as per-pixel scores of the input's `shape` (B, C, H, W): a patch's score spread over its pixels."""
    if explanation.dim() == 4:
        return explanation
    h, w = explanation.shape[-2:]
    height, width = shape[-2:]
    spread = explanation.repeat_interleave(height // h, dim=-2).repeat_interleave(width // w, dim=-1)
    return (spread / (shape[1] * (height // h) * (width // w)))[:, None].expand(-1, shape[1], -1, -1)


def explain(model: nn.Module, x: torch.Tensor, target: int, preprocess: Preprocess,
            methods: Iterable[str] = ALL_METHODS, settings: MapSettings = MapSettings(), *,
            patch_size: int | None = None, extra: Mapping[str, Explainer] | None = None,
            memo: dict | None = None, check: Callable[[], None] | None = None) -> dict[str, torch.Tensor]:
    """Maps of class `target` for normalised inputs x (B, C, H, W), by method name (see module docstring).

    Attention methods need an RvT (they capture its attention); captum methods other than Saliency,
    and `extra` methods, take one image (B = 1). memo: a dict reused across calls to skip repeated
    shared passes on the same input. check: called between passes; it raises to cancel.
    """
    methods = list(methods)
    extra = dict(extra or {})
    unknown = [m for m in methods if m not in ALL_METHODS and m not in extra]
    if unknown:
        raise ValueError(f"unknown methods {unknown}: choose from {', '.join(ALL_METHODS)} or pass them in `extra`")
    if x.dim() != 4:
        raise ValueError(f"expected normalised images (B, C, H, W), got {tuple(x.shape)}")
    one_image = [m for m in methods if m in extra or (m in CAPTUM_METHODS and m != "Saliency") or m in SMOOTHGRAD]
    if x.shape[0] != 1 and one_image:
        raise ValueError(f"{one_image} explain one image at a time; got a batch of {x.shape[0]}")
    patch_size = patch_size or model.patch_size
    return _explain(model, x.detach(), int(target), preprocess, methods, settings, patch_size, extra,
                    {} if memo is None else memo, check or (lambda: None))


def _explain(model, x, target, preprocess, methods, settings, patch_size, extra, memo, check):
    maps = {}
    key = tensor_key(x)
    for name in methods:
        check()
        if name in ATTENTION_METHODS:
            group = ("attention", key, target)
            if group not in memo:
                memo[group] = _attention_maps(model, x, target)
            maps[name] = memo[group][name]
        elif name in SMOOTHGRAD:
            group = ("smoothgrad", key, target)
            if group not in memo:
                memo[group] = smoothgrad_maps(model, x, target, settings.smooth_samples, settings.smooth_stdev,
                                              settings.seed)
            maps[name] = memo[group][SMOOTHGRAD[name]]
        elif name == "Saliency" and x.shape[0] > 1:
            maps[name] = torch.cat([attribute(model, row[None], target, name, preprocess=preprocess) for row in x])
        elif name in CAPTUM_METHODS:
            steps = settings.shap_samples if name == "GradientShap" else settings.ig_steps
            with _seeded(settings.seed):
                maps[name] = attribute(model, x, target, name, steps, batch_size=settings.batch_size,
                                       baseline=settings.baseline, preprocess=preprocess, check=check,
                                       occlusion=(patch_size, patch_size))  # one patch at a time: the model's unit
        elif name == RANDOM:
            h, w = patch_grid(x.shape[-2:], patch_size)
            generator = torch.Generator().manual_seed(settings.seed)
            maps[name] = torch.rand((1, h, w), generator=generator).expand(x.shape[0], -1, -1)
        else:
            maps[name] = _as_map(extra[name](model, x, target), x, patch_size, name)
    return maps


@contextlib.contextmanager
def _seeded(seed: int):
    """captum's GradientShap draws from NumPy's and torch's global RNGs: seed both, then restore them,
    so a scorecard is reproducible and the process's random streams are left as they were."""
    state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(state)


def _as_map(explanation: torch.Tensor, x: torch.Tensor, patch_size: int, name: str) -> torch.Tensor:
    explanation = explanation.detach().float().cpu()
    grid = patch_grid(x.shape[-2:], patch_size)
    if tuple(explanation.shape[-2:]) == grid and explanation.numel() == grid[0] * grid[1]:
        return explanation.reshape(1, *grid)
    if tuple(explanation.shape[-2:]) == tuple(x.shape[-2:]) and explanation.numel() in (x[0, 0].numel(), x[0].numel()):
        return explanation.reshape(1, -1, *x.shape[-2:]).expand(1, x.shape[1], -1, -1)
    raise ValueError(f"method {name!r} returned shape {tuple(explanation.shape)}: expected a patch map {grid} "
                     f"or a pixel map {tuple(x.shape[-2:])} (with or without channels)")


def _attention_maps(model: nn.Module, x: torch.Tensor, target: int) -> dict[str, torch.Tensor]:
    """One captured forward + backward: every rollout fusion, gradient rollout and the last CLS attention."""
    x = x.clone().requires_grad_(True)
    with torch.enable_grad(), capture(model, grads=True) as trace:
        model(x)[:, target].sum().backward()  # images do not interact: each gets its own gradient
    attention, gradients = trace.attention.float(), trace.attention_grad.float()  # (L, B, H, N, N)
    grid, batch = trace.grid, range(x.shape[0])

    def patches(rolled: torch.Tensor) -> torch.Tensor:  # (B, 1, N) CLS rows -> (B, h, w)
        return torch.stack([tokens_to_grid(cls_relevance(rolled, b), grid) for b in batch])

    maps = {name: patches(attention_rollout(attention, head_fusion=fusion, rows=[0]))  # the CLS row only
            for name, fusion in ROLLOUTS.items()}
    maps["Gradient rollout"] = patches(gradient_rollout(attention, gradients, rows=[0]))
    maps["CLS attention (last layer)"] = tokens_to_grid(attention[-1, :, :, 0, 1:].mean(1), grid)  # heads averaged
    return maps

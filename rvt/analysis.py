"""One model pass over one image, with everything the panels need, as CPU tensors.

`analyze` is what the app caches per session and what the report CLI and benchmarks render:
after it, every attention, rollout, statistics and rotary panel is a pure function of the
`Analysis`, with no further model pass.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from .budget import attention_dtype, check_budget
from .capture import AttentionGradients, Trace, capture
from .checkpoint import Bundle
from .device import autocast
from .grid import patch_grid
from .intervene import intervene
from .novelty import Novelty, assess, cls_features


@dataclass
class Analysis:
    image: np.ndarray  # (H, W, 3) uint8: the model's view of the input, for overlays
    input: torch.Tensor  # (1, C, H, W) normalised model input, on the CPU
    probs: torch.Tensor  # (classes,)
    trace: Trace  # CPU copy: attention (L, 1, H, N, N), rotary, q/k before and after rotation
    labels: list[str]
    patch_size: int
    heads_off: dict[int, list[int]] = field(default_factory=dict)
    rotary_off: list[int] = field(default_factory=list)
    novelty: Novelty | None = None  # how unlike the training data the input is; None for a what-if re-run

    @property
    def grid(self) -> tuple[int, int]:
        return self.trace.grid

    def top(self, k: int = 5) -> list[tuple[str, float]]:
        values, indices = self.probs.topk(min(k, len(self.labels)))
        return [(self.labels[i], float(v)) for v, i in zip(values, indices)]


def display_image(unit: torch.Tensor) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3) uint8."""
    arr = (unit.clamp(0, 1) * 255).round().byte().numpy()
    arr = np.repeat(arr, 3, axis=0) if arr.shape[0] == 1 else arr[:3]
    return np.ascontiguousarray(arr.transpose(1, 2, 0))


def prepare(bundle: Bundle, image: Image.Image, size: tuple[int, int] | None = None) -> tuple[torch.Tensor, np.ndarray]:
    """PIL image -> (normalised (1, C, H, W) input, display image) at `size` (H, W)."""
    size = size or bundle.preprocess.image_size
    patch_grid(size, bundle.config.patch_size)  # raises with a clear message if not a multiple
    unit = bundle.preprocess.to_unit(image, size)
    return bundle.preprocess.normalize(unit)[None], display_image(unit)


def analyze(bundle: Bundle, image: Image.Image, size: tuple[int, int] | None = None, *,
            heads_off: dict[int, list[int]] | None = None, rotary_off: list[int] | None = None,
            bf16: bool = False, budget: int | None = None, head_stats: bool = True) -> Analysis:
    """Preprocess `image` at `size` (H, W; default the training size) and run `analyze_input`.

    budget: bytes this analysis may use (`rvt.budget`); a size above it raises `BudgetError`, naming
    the largest size that fits, before the image is even resized.
    """
    size = tuple(size or bundle.preprocess.image_size)
    if budget is not None:
        check_budget(bundle.config, size, budget)
    x, shown = prepare(bundle, image, size)
    return analyze_input(bundle, x, shown, heads_off=heads_off, rotary_off=rotary_off, bf16=bf16,
                         head_stats=head_stats)


def analyze_input(bundle: Bundle, x: torch.Tensor, shown: np.ndarray, *,
                  heads_off: dict[int, list[int]] | None = None, rotary_off: list[int] | None = None,
                  bf16: bool = False, budget: int | None = None, head_stats: bool = True) -> Analysis:
    """One captured forward pass of a prepared input x (1, C, H, W), optionally with interventions.

    The model runs its fused kernel; attention is recomputed from each layer's rotated q and k in
    row blocks (`capture(recompute=True)`), kept as float16 when float32 would exceed
    `rvt.budget.ATTENTION_FP32_LIMIT` (`attention_dtype`). head_stats: reduce head statistics from
    those blocks while they are in cache (the Stats tab then only draws; without, it computes them
    from the stored maps when opened, several times slower at large sizes). bf16: autocast the
    pass to bfloat16 (CPU and CUDA). budget: as in `analyze`.
    """
    size = tuple(x.shape[-2:])
    if budget is not None:
        check_budget(bundle.config, size, budget)
    model, dtype = bundle.model, attention_dtype(bundle.config, size)
    with torch.inference_mode(), autocast(bundle.device, bf16), \
            capture(model, qk=True, head_stats=head_stats, dtype=dtype, recompute=True) as trace, \
            intervene(model, heads_off=heads_off, rotary_off=rotary_off), cls_features(model) as features:
        logits = model(x.to(bundle.device))
    intervened = any((heads_off or {}).values()) or bool(rotary_off)
    found = None if intervened else assess(bundle, features[-1][0].float(), logits[0].float(), x[0])
    return Analysis(image=shown, input=x, probs=logits.float().softmax(-1)[0].cpu(), trace=trace.cpu(dtype),
                    labels=bundle.labels, patch_size=bundle.config.patch_size,
                    heads_off=dict(heads_off or {}), rotary_off=list(rotary_off or []), novelty=found)


def attention_gradients(bundle: Bundle, analysis: Analysis, target: int) -> AttentionGradients:
    """Gradient of class `target`'s logit w.r.t. every attention map (one more pass), as factors.

    The pass and its backward run the model's fused kernel; the result holds per layer v and the
    gradient w.r.t. the attention output (each (1, H, N, d)), and `result[layer]` is the (1, H, N, N)
    map gradient grad_out v^T, built when a panel reads it (`viz.rollout` does, one layer at a time).
    `result.shape` is (L, 1, H, N, N); `result.full()` stacks them.
    """
    x = analysis.input.detach().to(bundle.device, copy=True).requires_grad_(True)
    with intervene(bundle.model, heads_off=analysis.heads_off, rotary_off=analysis.rotary_off), \
            capture(bundle.model, grad_factors=True) as trace:  # after intervene: sees heads before silencing
        bundle.model(x)[0, target].backward()
    factors = trace.attention_grad_factors()
    return AttentionGradients(grad_out=[g.cpu() for g in factors.grad_out], values=[v.cpu() for v in factors.values])

"""How much memory an analysis needs, known before anything is allocated.

An analysis (`rvt.analysis.analyze`) keeps every layer's attention, (L, H, N, N) with N = h*w + 1
tokens, so its memory grows with the fourth power of the side: 1.2 MB at 28 px on the bundled
model, 0.9 GB in float32 at 224 px. `estimate_bytes` adds up what the pass and the panels hold at
their peak; `check_budget` refuses a size whose estimate exceeds a byte budget, naming the
largest size of the same aspect that fits; `largest_size` is that size (for the resolution
controls' ranges). Only the config's shapes are read, so a request is refused before a single map
is allocated.

    check_budget(bundle.config, (224, 224), parse_bytes("1GB"))  # raises BudgetError if over
    largest_size(bundle.config, parse_bytes("1GB"), aspect=(3, 4))  # (H, W), multiples of the patch

The terms were measured as peak RSS growth of `analyze` on this project's RvT (tests/test_scale.py
checks the estimate against a measured peak).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch

from .capture import BLOCK_ELEMENTS
from .grid import patch_grid

# Above this much float32 attention an analysis stores it as float16: half the memory, rows
# exact to about 3 significant digits (0.05% relative). At or below it (the bundled model up to
# 112 px) everything stays float32 and equal to an unreduced capture.
ATTENTION_FP32_LIMIT = 128 * 2 ** 20
# Besides maps: the interpreter, torch and the model are already resident; preprocessing peaks at
# 50-85 MB whatever the size (measured at 112-448 px), plus small activations and allocator slack.
OVERHEAD = 96 * 2 ** 20
DEFAULT_BUDGET = "1GB"  # issue 10's target for an upload at 224 px on the bundled model
UNITS = {"": 1, "b": 1, "k": 10 ** 3, "kb": 10 ** 3, "m": 10 ** 6, "mb": 10 ** 6, "g": 10 ** 9, "gb": 10 ** 9,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30}


class BudgetError(ValueError):
    """A requested size needs more memory than the budget allows; the message names what fits."""


@dataclass(frozen=True)
class Estimate:
    """Bytes at the peak of an analysis, by what holds them."""

    attention: int  # the stored maps, every layer
    qk: int  # q and k before and after rotation
    forward: int  # the pass's working memory besides the stored maps
    panels: int  # the widest panel's working memory (rollout: one fused map, one head, discard masks)
    gradients: int  # gradient rollout's extra pass (0 unless asked for)
    other: int  # input, activations, allocator slack

    @property
    def total(self) -> int:
        return self.attention + self.qk + max(self.forward, self.panels, self.gradients) + self.other


def parse_bytes(text: str | int) -> int:
    """'1GB', '512MiB', '2e9' or an int -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match or match.group(2).lower() not in UNITS:
        raise ValueError(f"{text!r} is not a size: write e.g. 1GB, 512MiB or a number of bytes")
    return int(float(match.group(1)) * UNITS[match.group(2).lower()])


def default_budget() -> int:
    """Bytes per analysis: env RVT_MEMORY_BUDGET (e.g. '2GB') or DEFAULT_BUDGET."""
    return parse_bytes(os.environ.get("RVT_MEMORY_BUDGET", DEFAULT_BUDGET))


def _tokens(config, size: tuple[int, int]) -> int:
    h, w = patch_grid(size, config.patch_size)
    return h * w + 1


def _activations(config, n: int) -> int:
    """Bytes of one layer's float32 activations for n tokens (residual, MLP, q/k/v of every head)."""
    return n * (4 * config.dim + 4 * config.mlp_dim + 4 * config.heads * config.dim_head) * 4


def attention_dtype(config, size: tuple[int, int]) -> torch.dtype:
    """float32, or float16 when the float32 maps of all layers would exceed ATTENTION_FP32_LIMIT."""
    n = _tokens(config, size)
    return torch.float32 if config.depth * config.heads * n * n * 4 <= ATTENTION_FP32_LIMIT else torch.float16


def estimate(config, size: tuple[int, int], *, gradients: bool = False) -> Estimate:
    """What `analyze` at `size` (H, W) holds at its peak, plus gradient rollout's pass if asked."""
    n = _tokens(config, size)
    layer_maps = config.heads * n * n * 4  # one layer's (H, N, N) float32
    stored = config.depth * config.heads * n * n * attention_dtype(config, size).itemsize
    height, width = size
    inner = config.heads * config.dim_head
    activations = _activations(config, n)
    return Estimate(
        attention=stored,
        qk=4 * config.depth * inner * n * 4,
        # `analyze` recomputes attention in row blocks (capture(recompute=True)): two block buffers and a
        # block's temporaries, and the statistics' (N, N) distance table (built padded, so twice)
        forward=3 * min(BLOCK_ELEMENTS, config.heads * n * n) * 4 + 2 * n * n * 4,
        # fused map + one head's scratch + (with discard_ratio) topk values, int64 indices and a mask
        panels=2 * n * n * 4 + n * n * (4 + 8 + 1),
        # gradient rollout (`attention_gradients` keeps (1, H, N, d) factors): one layer's gradient map
        # built from them, the fused map and one head's scratch (1.75 maps measured at 224 px)
        gradients=2 * layer_maps + 2 * config.depth * inner * n * 4 if gradients else 0,
        other=OVERHEAD + height * width * (3 * 4 * config.channels + 3) + activations,
    )


def estimate_bytes(config, size: tuple[int, int], *, gradients: bool = False) -> int:
    """Bytes an analysis at `size` (H, W) needs at its peak (`estimate(...).total`)."""
    return estimate(config, size, gradients=gradients).total


def gradient_batch(config, size: tuple[int, int], budget: int, most: int = 64) -> int:
    """How many images of `size` (H, W) one attribution pass (forward and backward) may hold within
    `budget` bytes, at least 1 and at most `most`. Each image keeps about one float32 (H, N, N) map
    per layer for the backward (measured 34 MB per image at 112 px on the bundled model, where this
    counts 59 MB) plus its activations."""
    return max(1, min(most, (budget - OVERHEAD) // _gradient_image(config, size)))


def attribution_bytes(config, size: tuple[int, int], batch: int) -> int:
    """Bytes an attribution pass of `batch` images of `size` (H, W) holds (see `gradient_batch`)."""
    return OVERHEAD + batch * _gradient_image(config, size)


def _gradient_image(config, size: tuple[int, int]) -> int:
    n = _tokens(config, size)
    return config.depth * (config.heads * n * n * 4 + _activations(config, n))


def largest_size(config, budget: int, aspect: tuple[int, int] = (1, 1), *,
                 gradients: bool = False) -> tuple[int, int] | None:
    """The largest (H, W), multiples of the patch size with H:W close to `aspect`, whose estimate
    fits `budget` bytes; None when not even one patch does."""
    p = config.patch_size
    ah, aw = aspect
    if ah <= 0 or aw <= 0:
        raise ValueError(f"aspect must be two positive numbers (height, width), not {aspect}")
    size_of = lambda k: (p * max(1, round(k * ah / max(ah, aw))), p * max(1, round(k * aw / max(ah, aw))))  # noqa: E731
    fits = lambda k: estimate_bytes(config, size_of(k), gradients=gradients) <= budget  # noqa: E731
    if not fits(1):
        return None
    lo, hi = 1, 2
    while fits(hi):
        lo, hi = hi, hi * 2
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return size_of(lo)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.1f} kB"


def check_budget(config, size: tuple[int, int], budget: int, *, gradients: bool = False) -> int:
    """Raise BudgetError if an analysis at `size` (H, W) needs more than `budget` bytes; else return the estimate.

    Reads only the config: call it before preprocessing or allocating anything.
    """
    size = (int(size[0]), int(size[1]))
    patch_grid(size, config.patch_size)  # a clear message for sizes that are not multiples of the patch
    need = estimate_bytes(config, size, gradients=gradients)
    if need <= budget:
        return need
    fit = largest_size(config, budget, aspect=size, gradients=gradients)
    what = "gradient rollout" if gradients else "an analysis"
    hint = (f"the largest {size[0]}:{size[1]} size that fits is {fit[0]}x{fit[1]}" if fit
            else "not even one patch fits")
    raise BudgetError(f"{what} at {size[0]}x{size[1]} px needs about {_mb(need)}, over the {_mb(budget)} "
                      f"memory budget: {hint}")

"""The explorer's panels for one `Analysis`, each a pure function returning a PIL image.

Attention is read one layer (and, for maps, one row) at a time through `trace.attention_layers`:
no panel stacks or copies every map. Every panel is drawn with Pillow (a few milliseconds); the
matplotlib versions of the charts (`print_figures`) are what the export writes as SVG for print.
"""
from __future__ import annotations

import torch
from matplotlib.figure import Figure
from PIL import Image

from rvt.analysis import Analysis
from rvt.checkpoint import Bundle
from rvt.grid import tokens_to_grid
from rvt.rotary_lab import LabView, lab_view, model_schedule

from .attention import heads_image, model_view, query_maps, token_index
from .mosaic import mark_patch
from .predictions import predictions_figure, predictions_image
from .render import enlarge, overlay
from .rollout import cls_relevance, rollout
from .rotary import bands_figure, kernel_figure, kernel_image, nyquist_figure
from .rotary_lab import phase_figure, steps_figure
from .stats import head_stats_of, stats_figure, stats_image


def predictions_panel(analysis: Analysis, k: int = 5) -> Image.Image:
    return predictions_image(analysis.top(k))


def heads_panel(analysis: Analysis, layer: int, query: tuple[int, int] | None = None,
                shared_scale: bool = True) -> Image.Image:
    """All heads of a layer: CLS attention, or the attention row of patch `query` (row, col)."""
    grid = analysis.grid
    index = 0 if query is None else token_index(*query, grid)
    maps = query_maps(analysis.trace.attention_layers, layer, grid, index)
    what = "CLS token" if query is None else f"patch (row {query[0]}, col {query[1]})"
    return heads_image(analysis.image, maps, f"layer {layer}: where {what} looks", shared_scale,
                       mark=query, grid=grid, silenced=analysis.heads_off.get(layer))


def head_overlay(analysis: Analysis, layer: int, head: int, query: tuple[int, int] | None = None) -> Image.Image:
    """One head's map as a plain enlarged overlay (cheap: no figure), for quick head switching."""
    grid = analysis.grid
    index = 0 if query is None else token_index(*query, grid)
    maps = query_maps(analysis.trace.attention_layers, layer, grid, index)
    shown = enlarge(overlay(analysis.image, maps[head]))
    return Image.fromarray(shown if query is None else mark_patch(shown, query, grid))


def model_panel(analysis: Analysis) -> Image.Image:
    return model_view(analysis.trace.attention_layers, analysis.grid, analysis.trace.layers)


def rollout_map(analysis: Analysis, head_fusion: str = "mean", discard_ratio: float = 0.0,
                gradients: torch.Tensor | None = None) -> torch.Tensor:
    """(h, w) CLS relevance: attention rollout, or gradient rollout when `gradients` (from
    `rvt.analysis.attention_gradients`) are given; `head_fusion` applies to both. Only the CLS row is rolled."""
    rolled = rollout(analysis.trace.attention_layers, [0], head_fusion, discard_ratio, gradients)
    return tokens_to_grid(cls_relevance(rolled), analysis.grid)


def rollout_panel(analysis: Analysis, head_fusion: str = "mean", discard_ratio: float = 0.0,
                  gradients: torch.Tensor | None = None) -> Image.Image:
    relevance = rollout_map(analysis, head_fusion, discard_ratio, gradients).numpy()
    return Image.fromarray(enlarge(overlay(analysis.image, relevance)))


def analysis_head_stats(analysis: Analysis) -> dict[str, torch.Tensor]:
    """{statistic: (L, H)}: recorded during `analyze`'s pass, else computed layer by layer."""
    recorded = analysis.trace.head_stats
    return recorded or head_stats_of(analysis.trace.attention_layers, analysis.grid, analysis.patch_size)


def stats_panel(analysis: Analysis) -> Image.Image:
    return stats_image(analysis_head_stats(analysis), analysis.grid, analysis.patch_size)


def rotary_view(analysis: Analysis, bundle: Bundle) -> LabView:
    """The loaded model's rotary schedule at the analysis grid, against its training grid, as the rotary
    lab computes it: what the Rotary tab's phase and step pictures draw."""
    most = max(*analysis.grid, *bundle.train_grid)  # the analysis grid is already bounded by the server's budget
    return lab_view(model_schedule(bundle.model), analysis.grid, bundle.train_grid, max_grid=most)


def phase_panel(analysis: Analysis, bundle: Bundle) -> Image.Image:
    return phase_figure(rotary_view(analysis, bundle))


def steps_panel(analysis: Analysis, bundle: Bundle) -> Image.Image:
    return steps_figure(rotary_view(analysis, bundle))


def _query_qk(analysis: Analysis, layer: int, head: int) -> dict[str, torch.Tensor]:
    at = analysis.trace.layers.index(layer)
    return {name: analysis.trace.qk(name)[at, 0, head] for name in ("q", "k", "q_rot", "k_rot")}


def _kernel_title(layer: int, head: int, query: tuple[int, int]) -> str:
    return f"Rotary kernel: layer {layer}, head {head}, query patch (row {query[0]}, col {query[1]})"


def kernel_panel(analysis: Analysis, layer: int, head: int, query: tuple[int, int]) -> Image.Image:
    sin, cos = analysis.trace.rotary
    return kernel_image(sin, cos, analysis.grid, query, _query_qk(analysis, layer, head),
                        _kernel_title(layer, head, query))


def print_figures(analysis: Analysis, bundle: Bundle, query: tuple[int, int]) -> dict[str, Figure]:
    """{name: matplotlib Figure} of the charts, for the export's SVGs: predictions, head statistics,
    rotary bands and steps (when the model has rotary) and every layer's head-0 kernel for `query`."""
    figures = {"predictions": predictions_figure(analysis.top(5)),
               "head_stats": stats_figure(analysis_head_stats(analysis), analysis.grid, analysis.patch_size)}
    if bundle.config.use_rotary:
        sin, cos = analysis.trace.rotary
        figures["rotary_bands"] = bands_figure(sin, cos, analysis.grid)
        figures["rotary_nyquist"] = nyquist_figure(bundle.rotary_scales, analysis.grid, bundle.train_grid)
        for layer in analysis.trace.layers:
            figures[f"rotary_kernel_layer{layer}_head0"] = kernel_figure(
                sin, cos, analysis.grid, query, _query_qk(analysis, layer, 0), _kernel_title(layer, 0, query))
    return figures


def default_panels(analysis: Analysis, layer: int | None = None, head: int = 0) -> dict[str, Image.Image]:
    """What the explorer draws for a new image before any tab is opened."""
    layer = analysis.trace.layers[-1] if layer is None else layer
    return {"heads": heads_panel(analysis, layer), "head": head_overlay(analysis, layer, head),
            "rollout": rollout_panel(analysis), "model": model_panel(analysis)}

"""What RvT's 2-D axial rotary embedding is, shown on the patch grid.

Angles are `position * scale * pi` with positions in [-1, 1] along rows and columns. Between
neighbouring patches a band turns by `2 / (n - 1) * scale * pi`; above pi (Nyquist) the band
aliases: neighbouring patches look like they are a smaller, negative step apart.
"""
from __future__ import annotations

from math import pi

import numpy as np
import torch
from matplotlib.figure import Figure

from rvt.grid import tokens_to_grid

from .render import new_figure


def phase_steps(scales: torch.Tensor, n: int) -> torch.Tensor:
    """(bands,) angle between neighbouring patches along an axis of n patches, in radians."""
    return scales.float() * pi * (2.0 / (n - 1)) if n > 1 else torch.zeros_like(scales.float())


def aliasing_bands(scales: torch.Tensor, grid: tuple[int, int]) -> dict[str, list[int]]:
    """Indices of bands whose per-patch step exceeds pi, along rows and along columns."""
    return {axis: torch.nonzero(phase_steps(scales, n) > pi).flatten().tolist()
            for axis, n in (("rows", grid[0]), ("columns", grid[1]))}


def pair_angles(sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """(N, pairs) rotation angle of every rotated pair at every patch, from the model's tables."""
    return torch.atan2(sin[:, ::2], cos[:, ::2])


def rotary_kernel(sin: torch.Tensor, cos: torch.Tensor, query: int) -> torch.Tensor:
    """(N,) similarity rotary alone imposes between patch `query` and every patch.

    For a query and key that are the same unit vector spread evenly over the rotated pairs,
    q_rot . k_rot = mean over pairs of cos(angle_q - angle_k): 1 at zero offset.
    """
    s, c = sin[:, ::2], cos[:, ::2]  # (N, pairs): each pair shares one angle
    return (c[query] * c + s[query] * s).mean(-1)


def bands_figure(sin: torch.Tensor, cos: torch.Tensor, grid: tuple[int, int], max_bands: int = 8) -> Figure:
    """cos(angle) of each band over the grid: row bands (top) and column bands (bottom)."""
    angles = pair_angles(sin, cos)  # (N, 2 * bands): row bands then column bands
    bands = angles.shape[-1] // 2
    shown = np.unique(np.linspace(0, bands - 1, min(bands, max_bands)).round().astype(int))
    fig = new_figure(1.3 * len(shown) + 1.0, 3.2)
    axes = fig.subplots(2, len(shown), squeeze=False)
    for col, band in enumerate(shown):
        for row, (offset, axis) in enumerate(((0, "row"), (bands, "col"))):
            ax = axes[row, col]
            ax.imshow(tokens_to_grid(angles[:, offset + band].cos(), grid).numpy(), cmap="RdBu_r",
                      vmin=-1, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{axis} band {band}", fontsize=8)
    fig.suptitle("cos(rotation angle) per frequency band over the patch grid", fontsize=10)
    return fig


def nyquist_figure(scales: torch.Tensor, grid: tuple[int, int], train_grid: tuple[int, int] | None = None) -> Figure:
    """Per-band phase step per patch against pi, at the current grid and (markers) the training grid."""
    bands = np.arange(scales.numel())
    fig = new_figure(9, 3.2)
    axes = fig.subplots(1, 2, sharey=True)
    for ax, axis, n, n_train in ((axes[0], "rows", grid[0], train_grid and train_grid[0]),
                                 (axes[1], "columns", grid[1], train_grid and train_grid[1])):
        steps = phase_steps(scales, n).numpy()
        colours = np.where(steps > pi, "#d62728", "#1f77b4")
        ax.bar(bands, steps, color=colours)
        if n_train and n_train != n:
            ax.scatter(bands, phase_steps(scales, n_train).numpy(), marker="_", s=120, color="black",
                       label=f"at training grid ({n_train})", zorder=3)
            ax.legend(fontsize=8)
        ax.axhline(pi, color="black", linestyle="--", linewidth=1)
        ax.text(-0.4, pi, "pi (Nyquist)", va="bottom", ha="left", fontsize=8)
        ax.set_xlabel("band")
        ax.set_title(f"{axis}: {n} patches, {(steps > pi).sum()} of {len(steps)} bands alias (red)", fontsize=9)
    axes[0].set_ylabel("phase step between neighbours (rad)")
    return fig


def kernel_figure(sin: torch.Tensor, cos: torch.Tensor, grid: tuple[int, int], query: tuple[int, int],
                  qk: dict[str, torch.Tensor] | None = None, title: str = "") -> Figure:
    """Rotary-only kernel for a query patch and, with `qk` (one head's q, k, q_rot, k_rot, each
    (N, d) incl. CLS), the real scores q.k without and with rotation and their difference."""
    h, w = grid
    index = query[0] * w + query[1]
    panels = [("rotary alone: cos(angle diff.)", tokens_to_grid(rotary_kernel(sin, cos, index), grid), "RdBu_r", True)]
    if qk is not None:
        scale = qk["q"].shape[-1] ** -0.5
        plain = (qk["k"][1:] @ qk["q"][1 + index]) * scale
        rotated = (qk["k_rot"][1:] @ qk["q_rot"][1 + index]) * scale
        panels += [("q.k without rotation", tokens_to_grid(plain, grid), "viridis", False),
                   ("q.k with rotation (used)", tokens_to_grid(rotated, grid), "viridis", False),
                   ("change due to rotary", tokens_to_grid(rotated - plain, grid), "RdBu_r", True)]
    fig = new_figure(3.3 * len(panels), 3.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (name, values, cmap, symmetric) in zip(axes, panels):
        values = values.numpy()
        limit = float(np.abs(values).max()) or 1.0
        im = ax.imshow(values, cmap=cmap, interpolation="nearest",
                       **({"vmin": -limit, "vmax": limit} if symmetric else {}))
        ax.scatter([query[1]], [query[0]], marker="s", facecolors="none", edgecolors="lime", s=90, linewidths=2)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle(title or f"query patch (row {query[0]}, col {query[1]})", fontsize=10)
    return fig

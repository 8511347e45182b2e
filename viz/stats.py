"""Head statistics: mean attention distance (ViT paper, Fig. 7), entropy, share of attention on CLS."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from .render import new_figure


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(N, N) Euclidean distances in pixels between patch centres, row-major patches."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack((ys.flatten(), xs.flatten()), dim=-1).float() * patch_size
    return torch.cdist(centres, centres)


def mean_attention_distance(attention: torch.Tensor, grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(L, H) pixels: patch queries' attention-weighted distance to patch keys (CLS left out, renormalised)."""
    patches = attention[..., 1:, 1:].float()  # (L, B, H, N-1, N-1)
    weights = patches / patches.sum(-1, keepdim=True).clamp_min(1e-12)
    return (weights * patch_distances(grid, patch_size)).sum(-1).mean(dim=(1, 3))


def attention_entropy(attention: torch.Tensor) -> torch.Tensor:
    """(L, H) nats: entropy of each query's attention row, averaged over queries and batch."""
    p = attention.float().clamp_min(1e-12)
    return -(p * p.log()).sum(-1).mean(dim=(1, 3))


def cls_share(attention: torch.Tensor) -> torch.Tensor:
    """(L, H): fraction of patch queries' attention that goes to the CLS token."""
    return attention[..., 1:, 0].float().mean(dim=(1, 3))


def head_stats(attention: torch.Tensor, grid: tuple[int, int], patch_size: int) -> dict[str, list[list[float]]]:
    return {"mean_distance_px": mean_attention_distance(attention, grid, patch_size).tolist(),
            "entropy_nats": attention_entropy(attention).tolist(),
            "cls_share": cls_share(attention).tolist()}


def stats_figure(attention: torch.Tensor, grid: tuple[int, int], patch_size: int) -> Figure:
    distance = mean_attention_distance(attention, grid, patch_size).numpy()
    entropy = attention_entropy(attention).numpy()
    share = cls_share(attention).numpy()
    layers, heads = distance.shape
    fig = new_figure(11, 3.4)
    ax_d, ax_e, ax_c = fig.subplots(1, 3)
    for head in range(heads):
        ax_d.scatter(np.arange(layers), distance[:, head], s=18, label=f"head {head}")
    ax_d.set_xlabel("layer")
    ax_d.set_ylabel("mean attention distance (px)")
    ax_d.set_xticks(range(layers))
    ax_d.set_title("How far each head looks", fontsize=10)
    uniform = mean_attention_distance(torch.ones(1, 1, 1, grid[0] * grid[1] + 1, grid[0] * grid[1] + 1),
                                      grid, patch_size).item()
    ax_d.axhline(uniform, color="grey", linestyle="--", linewidth=1, label="uniform attention")
    ax_d.legend(fontsize=7, ncol=2)
    max_entropy = np.log(grid[0] * grid[1] + 1)
    for ax, values, title, cmap in ((ax_e, entropy, f"Entropy (nats, max {max_entropy:.2f})", "viridis"),
                                    (ax_c, share, "Share of attention on CLS", "magma")):
        im = ax.imshow(values, cmap=cmap, aspect="auto")
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(heads))
        ax.set_yticks(range(layers))
        ax.set_title(title, fontsize=10)
        fig.colorbar(im, ax=ax)
    return fig

"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout.

Each layer's attention, fused over heads, gets the residual connection as identity, A' = A + I,
and its rows are renormalised to sum to 1 (row-wise: keepdim, the bug of jacobgil/vit-explain
#16/#22 was dividing by the wrong axis). Layers are multiplied in forward order, R = A'_L ... A'_1,
so R[i, j] is how much output token i draws from input token j.

Only the rows asked for are computed: row vectors r go through the layers from the last one
back, r <- r A'_l, which with s = rowsums(F) + 1 of the fused map F is r <- (r / s) F + r / s,
so A' itself is never built. Heads are fused one at a time, so the working memory is one
(B, N, N) float map per layer whatever the number of heads or the storage dtype.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

FUSIONS = ("mean", "max", "min")


def _fuse(attention: torch.Tensor, head_fusion: str, gradients: torch.Tensor | None = None) -> torch.Tensor:
    """(B, H, N, N) -> (B, N, N) float32; with gradients each head is (attention x gradient)+ first."""
    if head_fusion not in FUSIONS:
        raise ValueError(f"head_fusion must be one of {FUSIONS}, not {head_fusion!r}")
    fused = scratch = None
    for head in range(attention.shape[1]):
        if scratch is None:
            scratch = torch.empty(attention[:, head].shape, dtype=torch.float32)
        weights = scratch.copy_(attention[:, head])
        if gradients is not None:
            weights.mul_(gradients[:, head]).clamp_(min=0)
        if fused is None:
            fused = weights.clone()
        elif head_fusion == "mean":
            fused.add_(weights)
        elif head_fusion == "max":
            torch.maximum(fused, weights, out=fused)
        else:
            torch.minimum(fused, weights, out=fused)
    return fused.div_(attention.shape[1]) if head_fusion == "mean" else fused


def _discard(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the lowest `ratio` of each map's weights, never the CLS->CLS entry."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {ratio}")
    if ratio == 0.0:
        return fused
    flat = fused.flatten(1)  # (B, N*N), a view: fused is this function's own buffer
    k = int(flat.shape[1] * ratio)
    lowest = flat.topk(k, dim=-1, largest=False).indices
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, 0] = False
    flat[drop] = 0
    return fused


def _check(attention: Sequence[torch.Tensor], gradients: Sequence[torch.Tensor] | None) -> tuple[int, int]:
    if len(attention) == 0:
        raise ValueError("no attention layers given")
    first = attention[0]
    if first.dim() != 4 or first.shape[-1] != first.shape[-2]:
        raise ValueError(f"expected full attention per layer (B, H, N, N), got {tuple(first.shape)} "
                         f"(a cls_only capture cannot be rolled out)")
    if gradients is not None and len(gradients) != len(attention):
        raise ValueError(f"{len(attention)} attention layers but {len(gradients)} gradient layers")
    return first.shape[0], first.shape[-1]


def rollout(attention: torch.Tensor | Sequence[torch.Tensor], rows: Sequence[int] | None = None,
            head_fusion: str = "mean", discard_ratio: float = 0.0,
            gradients: torch.Tensor | Sequence[torch.Tensor] | None = None) -> torch.Tensor:
    """Rows `rows` (default all) of the rollout: (B, len(rows), N), each summing to 1.

    attention: (L, B, H, N, N) or a list of per-layer (B, H, N, N) in forward order, any float dtype;
    gradients: the same shapes for gradient rollout (heads fused after attention x gradient, positive
    part): a tensor, a list, or `rvt.capture.AttentionGradients` (each layer built when read).
    """
    batch, n = _check(attention, gradients)
    index = torch.arange(n) if rows is None else torch.as_tensor(list(rows), dtype=torch.long)
    if index.numel() == 0 or int(index.min()) < 0 or int(index.max()) >= n:
        raise ValueError(f"rows must be token indices in 0..{n - 1}, got {list(index.tolist())[:8]}")
    result = torch.zeros(batch, index.numel(), n)  # (B, Q, N)
    result[:, torch.arange(index.numel()), index] = 1.0
    for layer in reversed(range(len(attention))):  # r A'_L ... A'_1: the last layer first
        weights = None if gradients is None else gradients[layer]  # built here, one layer at a time
        if weights is not None and weights.shape != attention[layer].shape:
            raise ValueError(f"layer {layer}: attention {tuple(attention[layer].shape)} and gradients "
                             f"{tuple(weights.shape)} differ")
        fused = _discard(_fuse(attention[layer], head_fusion, weights), discard_ratio)
        del weights
        scaled = result / (fused.sum(-1) + 1).unsqueeze(1)  # (B, Q, N): r_i / s_i
        result = torch.baddbmm(scaled, scaled, fused)
    return result


def attention_rollout(attention: torch.Tensor | Sequence[torch.Tensor], head_fusion: str = "mean",
                      discard_ratio: float = 0.0, rows: Sequence[int] | None = None) -> torch.Tensor:
    """attention (L, B, H, N, N) -> rollout (B, N, N) (or (B, len(rows), N)), rows summing to 1."""
    return rollout(attention, rows, head_fusion, discard_ratio)


def gradient_rollout(attention: torch.Tensor | Sequence[torch.Tensor], gradients: torch.Tensor | Sequence[torch.Tensor],
                     discard_ratio: float = 0.0, head_fusion: str = "mean",
                     rows: Sequence[int] | None = None) -> torch.Tensor:
    """Rollout of (attention x its gradient for one class), positive part, heads fused: (B, N, N)."""
    return rollout(attention, rows, head_fusion, discard_ratio, gradients)


def cls_relevance(rolled: torch.Tensor, batch: int = 0) -> torch.Tensor:
    """(N-1,) how much the CLS output draws from each patch, renormalised over the patches.

    rolled: (B, Q, N) rollout whose first row is CLS's (all rows, or rows=[0, ...])."""
    row = rolled[batch, 0, 1:]
    return row / row.sum().clamp_min(1e-12)

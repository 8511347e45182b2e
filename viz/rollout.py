"""Attention rollout (Abnar & Zuidema 2020) and gradient-weighted rollout.

Each layer's attention, fused over heads, gets the residual connection as identity, A' = A + I,
and its rows are renormalised to sum to 1 (row-wise: keepdim, the bug of jacobgil/vit-explain
#16/#22 was dividing by the wrong axis). Layers are multiplied in forward order, R = A'_L ... A'_1,
so R[i, j] is how much output token i draws from input token j.
"""
from __future__ import annotations

import torch

FUSIONS = ("mean", "max", "min")


def _fuse(attention: torch.Tensor, head_fusion: str) -> torch.Tensor:
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {FUSIONS}, not {head_fusion!r}")


def _discard(fused: torch.Tensor, ratio: float) -> torch.Tensor:
    """Zero the lowest `ratio` of each map's weights, never the CLS->CLS entry."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), not {ratio}")
    if ratio == 0.0:
        return fused
    flat = fused.flatten(1).clone()  # (B, N*N)
    k = int(flat.shape[1] * ratio)
    lowest = flat.topk(k, dim=-1, largest=False).indices
    drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, lowest, True)
    drop[:, 0] = False
    flat[drop] = 0
    return flat.view_as(fused)


def _roll(per_layer: list[torch.Tensor]) -> torch.Tensor:
    n = per_layer[0].shape[-1]
    eye = torch.eye(n, dtype=per_layer[0].dtype)
    result = eye.expand_as(per_layer[0]).clone()
    for fused in per_layer:  # forward order: the first layer is applied first
        a = fused + eye
        a = a / a.sum(dim=-1, keepdim=True)
        result = a @ result
    return result


def attention_rollout(attention: torch.Tensor, head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """attention (L, B, H, N, N) -> rollout (B, N, N), rows summing to 1."""
    if attention.dim() != 5 or attention.shape[-1] != attention.shape[-2]:
        raise ValueError(f"expected full attention (L, B, H, N, N), got {tuple(attention.shape)}")
    return _roll([_discard(_fuse(a.float(), head_fusion), discard_ratio) for a in attention])


def gradient_rollout(attention: torch.Tensor, gradients: torch.Tensor, discard_ratio: float = 0.0) -> torch.Tensor:
    """Rollout of (attention x its gradient for one class), positive part, heads averaged: (B, N, N)."""
    if attention.shape != gradients.shape:
        raise ValueError(f"attention {tuple(attention.shape)} and gradients {tuple(gradients.shape)} differ")
    weighted = (attention.float() * gradients.float()).clamp(min=0)
    return _roll([_discard(w.mean(dim=1), discard_ratio) for w in weighted])


def cls_relevance(rollout: torch.Tensor, batch: int = 0) -> torch.Tensor:
    """(N-1,) how much the CLS output draws from each patch, renormalised over the patches."""
    row = rollout[batch, 0, 1:]
    return row / row.sum().clamp_min(1e-12)

"""The one place that turns a token sequence into a patch grid and back.

Everything that needs a spatial view of tokens goes through these helpers with the
true (h, w) of the patch grid, so non-square inputs never fall back to a square-root guess.
"""
from __future__ import annotations

import torch
from einops import rearrange


def patch_grid(image_hw: tuple[int, int], patch_size: int) -> tuple[int, int]:
    """(H, W) in pixels -> (h, w) in patches; raises if a side is not a multiple of the patch."""
    height, width = image_hw
    if height % patch_size or width % patch_size:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the patch size {patch_size}: "
            f"both sides must be divisible by {patch_size}"
        )
    return height // patch_size, width // patch_size


def tokens_to_grid(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(..., h*w) patch values -> (..., h, w); CLS must already be removed."""
    h, w = grid
    if tokens.shape[-1] != h * w:
        raise ValueError(f"{tokens.shape[-1]} tokens do not fill a {h}x{w} grid")
    return rearrange(tokens, "... (h w) -> ... h w", h=h, w=w)


def features_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, h*w, D) patch features -> (B, D, h, w) feature map, for convolutions."""
    h, w = grid
    return rearrange(tokens, "b (h w) d -> b d h w", h=h, w=w)


def map_to_features(fmap: torch.Tensor) -> torch.Tensor:
    """(B, D, h, w) -> (B, h*w, D), row-major like the patch embedding."""
    return rearrange(fmap, "b d h w -> b (h w) d")

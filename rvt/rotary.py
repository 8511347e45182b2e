"""2-D axial rotary position embedding, as RvT defines it.

Each head's rotary dimensions are split in two halves: the first half encodes the patch row,
the second the patch column. Inside a half, dimensions come in interleaved pairs (0,1), (2,3), ...;
a pair is one 2-D vector rotated by an angle `position * frequency * pi`. Positions run over
[-1, 1] along each axis, and RvT's frequencies are `linspace(1, image_size / 2, dim_head // 4)`.
The CLS token is never rotated (the attention module skips it).
"""
from __future__ import annotations

from math import pi

import torch
from einops import repeat
from torch import nn


def rotate_every_two(x: torch.Tensor) -> torch.Tensor:
    """(x0, x1, x2, x3, ...) -> (-x1, x0, -x3, x2, ...): a quarter turn of every pair."""
    pairs = x.unflatten(-1, (-1, 2))
    x1, x2 = pairs.unbind(dim=-1)
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


def apply_rotary(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the first `sin.shape[-1]` dims of patch tokens t (..., N, d); the rest pass through."""
    rot_dim = sin.shape[-1]
    t_rot, t_pass = t[..., :rot_dim], t[..., rot_dim:]
    t_rot = t_rot * cos + rotate_every_two(t_rot) * sin
    return torch.cat((t_rot, t_pass), dim=-1)


def rotate_pairs(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """The same rotation as `rotate_tokens`, in real arithmetic: (x0, x1) -> (x0 c - x1 s, x0 s + x1 c).

    t: (..., 1 + N, d), CLS first (identity rotor); the first `sin.shape[-1]` dims are rotated. Only
    elementwise ops, so `torch.compile` fuses it into one kernel (it cannot generate code for complex
    multiplies). Computed in float32 whatever t's dtype (bf16 cosines near 1 lose the small angles),
    then cast back.
    """
    rot_dim = sin.shape[-1]
    c = torch.cat((torch.ones_like(cos[:1, ::2]), cos[:, ::2])).float()  # (1 + N, rot_dim / 2)
    s = torch.cat((torch.zeros_like(sin[:1, ::2]), sin[:, ::2])).float()
    x0, x1 = t[..., :rot_dim].float().unflatten(-1, (-1, 2)).unbind(-1)
    rotated = torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2).to(t.dtype)
    return rotated if rot_dim == t.shape[-1] else torch.cat((rotated, t[..., rot_dim:]), dim=-1)


def rotate_tokens(t: torch.Tensor, sin: torch.Tensor, cos: torch.Tensor) -> torch.Tensor:
    """Rotate the patch tokens of t (..., 1 + N, d), CLS first and left as it is.

    Eager fp32/fp64 with every dim rotated: each pair is a complex number times a unit rotor, one
    fused multiply instead of slicing, negating, stacking and concatenating (most of the attention
    block's non-GEMM time on CPU). Under `torch.compile`, in bf16/fp16, or with dims left unrotated:
    `rotate_pairs`, the real-valued form of the same rotation.
    """
    rot_dim = sin.shape[-1]
    if t.dtype in (torch.float32, torch.float64) and rot_dim == t.shape[-1] and not torch.compiler.is_compiling():
        rotor = torch.complex(cos[:, ::2].to(t.dtype), sin[:, ::2].to(t.dtype))  # (N, d/2)
        rotor = torch.cat((torch.ones_like(rotor[:1]), rotor))  # CLS: identity
        pairs = t.unflatten(-1, (-1, 2))
        if pairs.stride(-2) != 2 or pairs.storage_offset() % 2:
            pairs = pairs.contiguous()
        return torch.view_as_real(torch.view_as_complex(pairs) * rotor).flatten(-2)
    return rotate_pairs(t, sin, cos)


class AxialRotaryEmbedding(nn.Module):
    """Produces (sin, cos), each (h*w, 4 * dim_head // 4), for any patch grid (h, w)."""

    def __init__(self, dim_head: int, max_freq: float):
        super().__init__()
        # One frequency band per rotated pair in each half; RvT spaces them linearly up to
        # image_size / 2. Kept as a buffer (not a parameter) so checkpoints carry it, as in vit-pytorch.
        self.register_buffer("scales", torch.linspace(1.0, max_freq / 2, dim_head // 4))

    @property
    def num_bands(self) -> int:
        return self.scales.numel()

    def axis_phases(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation angles per row (h, bands) and per column (w, bands), in radians."""
        h, w = grid
        scales = self.scales.float()
        rows = torch.linspace(-1.0, 1.0, h, device=scales.device)[:, None] * scales * pi
        cols = torch.linspace(-1.0, 1.0, w, device=scales.device)[:, None] * scales * pi
        return rows, cols

    def phases(self, grid: tuple[int, int]) -> torch.Tensor:
        """(h*w, 2 * bands): row-band angles then column-band angles for every patch (row-major)."""
        h, w = grid
        rows, cols = self.axis_phases(grid)
        row_phase = repeat(rows, "h f -> (h w) f", w=w)
        col_phase = repeat(cols, "w f -> (h w) f", h=h)
        return torch.cat((row_phase, col_phase), dim=-1)

    def forward(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        # Always fp32: bf16 angles of up to image_size/2 * pi lose whole turns.
        with torch.autocast(device_type=self.scales.device.type, enabled=False):
            phase = repeat(self.phases(grid), "n f -> n (f two)", two=2)  # (N, rot_dim)
            return phase.sin(), phase.cos()

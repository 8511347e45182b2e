"""RvT: a Vision Transformer with 2-D axial rotary embeddings, depthwise-conv queries and GEGLU.

Parameter names and shapes mirror `vit_pytorch.rvt.RvT` exactly, so its state_dicts load with
strict=True. Beyond the reference: any input size whose sides are multiples of the patch size
(non-square included, the rotary grid is the true (h, w)), a fused attention path, and heads
kept as their own axis so captured attention is (B, H, N, N).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from .grid import features_to_map, map_to_features, patch_grid
from .rotary import AxialRotaryEmbedding, rotate_tokens


@dataclass
class RvTConfig:
    image_size: int = 28  # training resolution; also sets the top rotary frequency (image_size / 2)
    patch_size: int = 4  # 28 / 4 gives a 7x7 grid, enough patches for attention maps to mean something
    num_classes: int = 10
    dim: int = 96
    depth: int = 6
    heads: int = 4
    mlp_dim: int = 192  # GEGLU doubles the first projection, so 2x dim already costs like a 4x MLP
    channels: int = 1  # Fashion-MNIST is grayscale
    dim_head: int = 24  # a multiple of 4: rows and columns each get dim_head // 4 rotated pairs
    dropout: float = 0.0
    emb_dropout: float = 0.0
    use_rotary: bool = True
    use_ds_conv: bool = True
    use_glu: bool = True

    def to_dict(self) -> dict:
        return asdict(self)


class DepthWiseConv2d(nn.Module):
    def __init__(self, dim_in: int, dim_out: int, kernel_size: int, padding: int, bias: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dim_in, dim_in, kernel_size, padding=padding, groups=dim_in, bias=bias),
            nn.Conv2d(dim_in, dim_out, kernel_size=1, bias=bias),
        )

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) feature map -> (B, h*w, C_out) tokens."""
        depthwise, pointwise = self.net
        tokens = map_to_features(depthwise(fmap))  # (B, N, C)
        # The 1x1 conv is a matmul on tokens; as a GEMM it runs several times faster than conv2d on CPU.
        return F.linear(tokens, pointwise.weight.flatten(1), pointwise.bias)


class SpatialConv(nn.Module):
    """Queries from a depthwise-separable conv over the patch grid; CLS gets a linear projection."""

    def __init__(self, dim_in: int, dim_out: int, kernel: int):
        super().__init__()
        self.conv = DepthWiseConv2d(dim_in, dim_out, kernel, padding=kernel // 2, bias=False)
        self.cls_proj = nn.Linear(dim_in, dim_out) if dim_in != dim_out else nn.Identity()

    def forward(self, x: torch.Tensor, fmap_dims: dict) -> torch.Tensor:
        cls_token, patches = x[:, :1], x[:, 1:]  # (B, 1, D), (B, N, D)
        patches = self.conv(features_to_map(patches, (fmap_dims["h"], fmap_dims["w"])))
        return torch.cat((self.cls_proj(cls_token), patches), dim=1)


class GEGLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, gates = x.chunk(2, dim=-1)
        if torch.is_grad_enabled():
            return F.gelu(gates) * x
        return F.gelu(gates).mul_(x)  # inference: reuse the gelu buffer, one allocation less


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden_dim: int, dropout: float = 0.0, use_glu: bool = True):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.Linear(dim, hidden_dim * 2 if use_glu else hidden_dim),
            GEGLU() if use_glu else nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Pre-norm multi-head attention with rotary q/k on patch tokens (CLS is not rotated).

    `fused` picks F.scaled_dot_product_attention; `capture` switches it off for the duration of a
    capture so the explicit path's `attend` module (a softmax) can be hooked for probabilities.
    """

    def __init__(self, dim: int, heads: int = 8, dim_head: int = 64, dropout: float = 0.0,
                 use_rotary: bool = True, use_ds_conv: bool = True, conv_query_kernel: int = 5):
        super().__init__()
        inner_dim = dim_head * heads
        self.heads = heads
        self.scale = dim_head ** -0.5
        self.use_rotary = use_rotary
        self.use_ds_conv = use_ds_conv
        self.fused = True

        self.norm = nn.LayerNorm(dim)
        self.attend = nn.Softmax(dim=-1)
        self.dropout = nn.Dropout(dropout)
        self.to_q = (SpatialConv(dim, inner_dim, conv_query_kernel) if use_ds_conv
                     else nn.Linear(dim, inner_dim, bias=False))
        self.to_kv = nn.Linear(dim, inner_dim * 2, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner_dim, dim), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, pos_emb: tuple[torch.Tensor, torch.Tensor], fmap_dims: dict) -> torch.Tensor:
        x = self.norm(x)
        q = self.to_q(x, fmap_dims) if self.use_ds_conv else self.to_q(x)
        k, v = self.to_kv(x).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=self.heads) for t in (q, k, v))

        if self.use_rotary:
            sin, cos = pos_emb  # (N-1, rot_dim) each, CLS excluded
            q, k = rotate_tokens(q, sin, cos), rotate_tokens(k, sin, cos)

        if self.fused:
            p = self.dropout.p if self.training else 0.0
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=self.scale)
        else:
            attn = self.attend(q @ k.transpose(-1, -2) * self.scale)  # (B, H, N, N)
            out = self.dropout(attn) @ v
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


class Transformer(nn.Module):
    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, image_size: int,
                 dropout: float = 0.0, use_rotary: bool = True, use_ds_conv: bool = True, use_glu: bool = True):
        super().__init__()
        self.pos_emb = AxialRotaryEmbedding(dim_head, max_freq=image_size)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Attention(dim, heads=heads, dim_head=dim_head, dropout=dropout,
                          use_rotary=use_rotary, use_ds_conv=use_ds_conv),
                FeedForward(dim, mlp_dim, dropout=dropout, use_glu=use_glu),
            ])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor, fmap_dims: dict) -> torch.Tensor:
        pos_emb = self.pos_emb((fmap_dims["h"], fmap_dims["w"]))
        for attn, ff in self.layers:
            x = attn(x, pos_emb=pos_emb, fmap_dims=fmap_dims) + x
            x = ff(x) + x
        return x


class RvT(nn.Module):
    """Same keyword-only constructor as `vit_pytorch.rvt.RvT`."""

    def __init__(self, *, image_size: int, patch_size: int, num_classes: int, dim: int, depth: int,
                 heads: int, mlp_dim: int, channels: int = 3, dim_head: int = 64, dropout: float = 0.0,
                 emb_dropout: float = 0.0, use_rotary: bool = True, use_ds_conv: bool = True,
                 use_glu: bool = True):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} must be divisible by patch_size {patch_size}")
        self.config = RvTConfig(image_size=image_size, patch_size=patch_size, num_classes=num_classes,
                                dim=dim, depth=depth, heads=heads, mlp_dim=mlp_dim, channels=channels,
                                dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout,
                                use_rotary=use_rotary, use_ds_conv=use_ds_conv, use_glu=use_glu)
        self.patch_size = patch_size
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=patch_size, p2=patch_size),
            nn.Linear(channels * patch_size ** 2, dim),
        )
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        # vit-pytorch accepts emb_dropout but never applies it; here it is applied after the CLS concat.
        self.dropout = nn.Dropout(emb_dropout)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, image_size,
                                       dropout, use_rotary, use_ds_conv, use_glu)
        self.mlp_head = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, num_classes))

    @classmethod
    def from_config(cls, config: RvTConfig) -> RvT:
        return cls(**config.to_dict())

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, C, H, W) with H and W multiples of patch_size -> logits (B, num_classes)."""
        h, w = patch_grid(img.shape[-2:], self.patch_size)
        x = self.to_patch_embedding(img)  # (B, h*w, D)
        cls_tokens = repeat(self.cls_token, "() n d -> b n d", b=x.shape[0])
        x = self.dropout(torch.cat((cls_tokens, x), dim=1))  # (B, 1 + h*w, D)
        x = self.transformer(x, fmap_dims={"h": h, "w": w})
        return self.mlp_head(x[:, 0])

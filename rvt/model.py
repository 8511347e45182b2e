"""RvT: a Vision Transformer with 2-D axial rotary embeddings, depthwise-conv queries and GEGLU.

Parameter names and shapes mirror `vit_pytorch.rvt.RvT` exactly, so its state_dicts load with
strict=True. Beyond the reference: any input size whose sides are multiples of the patch size
(non-square included, the rotary grid is the true (h, w)), a fused attention path, and heads
kept as their own axis so captured attention is (B, H, N, N).
"""
from __future__ import annotations

import inspect
import numbers
from dataclasses import asdict, dataclass, field, fields

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from einops.layers.torch import Rearrange
from torch import nn

from .grid import features_to_map, map_to_features, patch_grid
from .rotary import AxialRotaryEmbedding, rotate_tokens

REQUIRED = inspect.Parameter.empty  # a keyword vit_pytorch.rvt.RvT has no default for


def _field(default, vit_pytorch=REQUIRED):
    """A config field: our default (the bundled model's) and vit_pytorch.rvt.RvT's for the keyword constructor."""
    return field(default=default, metadata={"vit_pytorch": vit_pytorch})


@dataclass
class RvTConfig:
    """The one definition of an RvT's hyper-parameters; `RvT(config)` builds it.

    Each field also carries vit-pytorch's default for the same keyword, so `RvT(image_size=..., ...)`
    accepts exactly `vit_pytorch.rvt.RvT`'s keywords, with its required ones and its defaults.
    """

    image_size: int = _field(28)  # training resolution; also sets the top rotary frequency (image_size / 2)
    patch_size: int = _field(4)  # 28 / 4 gives a 7x7 grid, enough patches for attention maps to mean something
    num_classes: int = _field(10)
    dim: int = _field(96)
    depth: int = _field(6)
    heads: int = _field(4)
    mlp_dim: int = _field(192)  # GEGLU doubles the first projection, so 2x dim already costs like a 4x MLP
    channels: int = _field(1, vit_pytorch=3)  # Fashion-MNIST is grayscale
    dim_head: int = _field(24, vit_pytorch=64)  # a multiple of 4: rows and columns each get dim_head // 4 pairs
    dropout: float = _field(0.0, vit_pytorch=0.0)
    emb_dropout: float = _field(0.0, vit_pytorch=0.0)
    use_rotary: bool = _field(True, vit_pytorch=True)
    use_ds_conv: bool = _field(True, vit_pytorch=True)
    use_glu: bool = _field(True, vit_pytorch=True)

    def __post_init__(self):
        for f in fields(self):
            value, kind = getattr(self, f.name), type(f.default)
            # JSON's 4 or numpy's int64 are ints; 4.5, "4" and True are not (bool subclasses int).
            ok = isinstance(value, bool) if kind is bool else not isinstance(value, bool) and isinstance(
                value, numbers.Integral if kind is int else numbers.Real)
            if not ok:
                raise TypeError(f"RvTConfig.{f.name} must be {kind.__name__}, not {value!r}")
            setattr(self, f.name, value := kind(value))
            if kind is int and value < 1:
                raise ValueError(f"RvTConfig.{f.name} must be at least 1, not {value}")
            if kind is float and not 0.0 <= value <= 1.0:
                raise ValueError(f"RvTConfig.{f.name} is a probability in [0, 1], not {value}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be divisible by patch_size {self.patch_size}")

    @classmethod
    def keywords(cls) -> dict[str, object]:
        """vit_pytorch.rvt.RvT's keywords -> their defaults (`REQUIRED` where it has none)."""
        return {f.name: f.metadata["vit_pytorch"] for f in fields(cls)}

    @classmethod
    def from_keywords(cls, **kwargs) -> RvTConfig:
        """The config `vit_pytorch.rvt.RvT(**kwargs)` would build: same required keywords, same defaults."""
        keywords = cls.keywords()
        unknown = sorted(set(kwargs) - set(keywords))
        missing = [k for k, default in keywords.items() if default is REQUIRED and k not in kwargs]
        if unknown or missing:
            wrong = "; ".join(f"{what} {names}" for what, names in (("unknown keywords", unknown),
                                                                    ("missing required keywords", missing)) if names)
            raise TypeError(f"RvT(): {wrong}. It takes an RvTConfig, or vit_pytorch.rvt.RvT's keywords "
                            f"{list(keywords)}")
        return cls(**{**{k: d for k, d in keywords.items() if d is not REQUIRED}, **kwargs})

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
    def __init__(self, c: RvTConfig):
        super().__init__()
        self.pos_emb = AxialRotaryEmbedding(c.dim_head, max_freq=c.image_size)
        self.layers = nn.ModuleList(
            nn.ModuleList([
                Attention(c.dim, heads=c.heads, dim_head=c.dim_head, dropout=c.dropout,
                          use_rotary=c.use_rotary, use_ds_conv=c.use_ds_conv),
                FeedForward(c.dim, c.mlp_dim, dropout=c.dropout, use_glu=c.use_glu),
            ])
            for _ in range(c.depth)
        )

    def forward(self, x: torch.Tensor, fmap_dims: dict) -> torch.Tensor:
        pos_emb = self.pos_emb((fmap_dims["h"], fmap_dims["w"]))
        for attn, ff in self.layers:
            x = attn(x, pos_emb=pos_emb, fmap_dims=fmap_dims) + x
            x = ff(x) + x
        return x


class RvT(nn.Module):
    """`RvT(config)`, or `RvT(image_size=..., ...)` with `vit_pytorch.rvt.RvT`'s keywords and defaults."""

    def __init__(self, config: RvTConfig | None = None, /, **kwargs):
        super().__init__()
        if config is None:
            config = RvTConfig.from_keywords(**kwargs)
        elif kwargs or not isinstance(config, RvTConfig):
            raise TypeError("RvT takes one RvTConfig, or vit_pytorch.rvt.RvT's keywords, not both")
        self.config = c = config
        self.patch_size = c.patch_size
        self.to_patch_embedding = nn.Sequential(
            Rearrange("b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=c.patch_size, p2=c.patch_size),
            nn.Linear(c.channels * c.patch_size ** 2, c.dim),
        )
        self.cls_token = nn.Parameter(torch.randn(1, 1, c.dim))
        # vit-pytorch accepts emb_dropout but never applies it; here it is applied after the CLS concat.
        self.dropout = nn.Dropout(c.emb_dropout)
        self.transformer = Transformer(c)
        self.mlp_head = nn.Sequential(nn.LayerNorm(c.dim), nn.Linear(c.dim, c.num_classes))

    @classmethod
    def from_config(cls, config: RvTConfig) -> RvT:
        return cls(config)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img (B, C, H, W) with H and W multiples of patch_size -> logits (B, num_classes)."""
        h, w = patch_grid(img.shape[-2:], self.patch_size)
        x = self.to_patch_embedding(img)  # (B, h*w, D)
        cls_tokens = repeat(self.cls_token, "() n d -> b n d", b=x.shape[0])
        x = self.dropout(torch.cat((cls_tokens, x), dim=1))  # (B, 1 + h*w, D)
        x = self.transformer(x, fmap_dims={"h": h, "w": w})
        return self.mlp_head(x[:, 0])


# What help(RvT) and IDEs show: the config, or vit_pytorch.rvt.RvT's keywords with their defaults.
RvT.__init__.__signature__ = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
     inspect.Parameter("config", inspect.Parameter.POSITIONAL_ONLY, default=None)]
    + [inspect.Parameter(k, inspect.Parameter.KEYWORD_ONLY, default=d) for k, d in RvTConfig.keywords().items()])

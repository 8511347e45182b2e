"""Scoped what-if interventions for debugging: silence heads, switch off rotary or single bands in layers.

    with intervene(model, heads_off={3: [0, 2]}, rotary_off=[0, 1], bands_off={2: [4, ("col", 5)]}):
        logits = model(x)

A silenced head's output is zeroed before the output projection; a layer without rotary gets the
identity rotation (sin = 0, cos = 1); a switched-off band gets the identity rotation in its pair only:
band b is pair b (rows) and pair bands + b (columns), an int switches off both, ("row", b) or ("col", b)
one. All are forward pre-hooks, registered first (`prepend`) so that a `capture` sees the intervened
inputs, and removed in `finally`. Works on this project's RvT and on vit-pytorch's.
"""
from __future__ import annotations

import contextlib

import torch
from einops import rearrange
from torch import nn

from .capture import attention_blocks


def _silence(heads: list[int], block: nn.Module):
    def hook(_module, args):
        out = rearrange(args[0], "b n (h d) -> b n h d", h=block.heads).clone()  # (B, N, H, d)
        out[:, :, heads] = 0
        return (rearrange(out, "b n h d -> b n (h d)"), *args[1:])
    return hook


def _no_rotation(_module, args, kwargs):
    sin, cos = kwargs["pos_emb"]
    kwargs = dict(kwargs, pos_emb=(torch.zeros_like(sin), torch.ones_like(cos)))
    return args, kwargs


def _identity_pairs(pairs: list[int]):
    def hook(_module, args, kwargs):
        sin, cos = kwargs["pos_emb"]  # (N, rot_dim), or (1, N, rot_dim) in vit-pytorch
        dims = [d for p in pairs for d in (2 * p, 2 * p + 1)]
        sin, cos = sin.clone(), cos.clone()
        sin[..., dims], cos[..., dims] = 0.0, 1.0
        return args, dict(kwargs, pos_emb=(sin, cos))
    return hook


def _band_pairs(bands: list, num_bands: int, layer: int) -> list[int]:
    """Band specs (b, ("row", b), ("col", b)) -> sorted pair indices; raises on anything else."""
    pairs = set()
    for spec in bands:
        axis, band = None, None
        if isinstance(spec, int) and not isinstance(spec, bool):
            axis, band = "both", spec
        elif isinstance(spec, tuple | list) and len(spec) == 2:
            axis, band = spec
        if axis not in ("both", "row", "col") or not isinstance(band, int) or not 0 <= band < num_bands:
            raise ValueError(f"band {spec!r} in layer {layer} is not a band: give b, ('row', b) or ('col', b) "
                             f"with b in 0..{num_bands - 1}")
        pairs.update(([band] if axis != "col" else []) + ([num_bands + band] if axis != "row" else []))
    return sorted(pairs)


@contextlib.contextmanager
def intervene(model: nn.Module, *, heads_off: dict[int, list[int]] | None = None,
              rotary_off: list[int] | None = None, bands_off: dict[int, list] | None = None):
    blocks = attention_blocks(model)
    heads_off = {int(k): sorted(set(int(h) for h in v)) for k, v in (heads_off or {}).items() if v}
    rotary_off = sorted(set(int(i) for i in (rotary_off or [])))
    bands_off = {int(k): list(v) for k, v in (bands_off or {}).items() if v}
    for layer in [*heads_off, *rotary_off, *bands_off]:
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range: the model has layers 0..{len(blocks) - 1}")
    for layer, heads in heads_off.items():
        bad = [h for h in heads if not 0 <= h < blocks[layer].heads]
        if bad:
            raise ValueError(f"heads {bad} out of range in layer {layer}: it has heads 0..{blocks[layer].heads - 1}")
    num_bands = model.transformer.pos_emb.scales.numel()
    pairs_off = {layer: _band_pairs(bands, num_bands, layer) for layer, bands in bands_off.items()}
    handles = []
    try:
        for layer, heads in heads_off.items():
            handles.append(blocks[layer].to_out.register_forward_pre_hook(_silence(heads, blocks[layer]), prepend=True))
        for layer in rotary_off:
            handles.append(blocks[layer].register_forward_pre_hook(_no_rotation, with_kwargs=True, prepend=True))
        for layer, pairs in pairs_off.items():
            handles.append(blocks[layer].register_forward_pre_hook(_identity_pairs(pairs), with_kwargs=True,
                                                                   prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()

"""Scoped what-if interventions for debugging: silence heads, or switch off rotary in layers.

    with intervene(model, heads_off={3: [0, 2]}, rotary_off=[0, 1]):
        logits = model(x)

A silenced head's output is zeroed before the output projection; a layer without rotary gets the
identity rotation (sin = 0, cos = 1). Both are forward pre-hooks, registered first (`prepend`) so
that a `capture` sees the intervened inputs, and removed in `finally`. Works on this project's RvT
and on vit-pytorch's.
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


@contextlib.contextmanager
def intervene(model: nn.Module, *, heads_off: dict[int, list[int]] | None = None,
              rotary_off: list[int] | None = None):
    blocks = attention_blocks(model)
    heads_off = {int(k): sorted(set(int(h) for h in v)) for k, v in (heads_off or {}).items() if v}
    rotary_off = sorted(set(int(i) for i in (rotary_off or [])))
    for layer in [*heads_off, *rotary_off]:
        if not 0 <= layer < len(blocks):
            raise ValueError(f"layer {layer} out of range: the model has layers 0..{len(blocks) - 1}")
    for layer, heads in heads_off.items():
        bad = [h for h in heads if not 0 <= h < blocks[layer].heads]
        if bad:
            raise ValueError(f"heads {bad} out of range in layer {layer}: it has heads 0..{blocks[layer].heads - 1}")
    handles = []
    try:
        for layer, heads in heads_off.items():
            handles.append(blocks[layer].to_out.register_forward_pre_hook(_silence(heads, blocks[layer]), prepend=True))
        for layer in rotary_off:
            handles.append(blocks[layer].register_forward_pre_hook(_no_rotation, with_kwargs=True, prepend=True))
        yield
    finally:
        for handle in handles:
            handle.remove()

"""Scoped capture of what an RvT computes: attention probabilities, rotary tables, q/k.

    with capture(model) as trace:
        logits = model(x)
    trace.attention  # (L, B, H, N, N), CLS first, rows sum to 1

Works on this project's `RvT` and on an unmodified `vit_pytorch.rvt.RvT` (both expose
`transformer.layers[i][0].attend`, a softmax module, and `transformer.pos_emb`). Hooks are
registered inside `try` and removed in `finally`, also when the forward raises; all recorded
state lives on the returned `Trace`, never on the model or the module. While capturing, this
project's attention modules leave the fused kernel (which has no probabilities to give) for the
explicit path; their previous setting is restored on exit.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from functools import partial

import torch
from einops import rearrange
from torch import nn

from .rotary import apply_rotary


@dataclass
class Trace:
    """What one forward pass computed. Per-layer tensors are stacked in `layers` order."""

    layers: list[int]
    cls_only: bool = False
    grid: tuple[int, int] | None = None  # (h, w) patch grid of the last forward
    logits: torch.Tensor | None = None  # (B, classes)
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # (sin, cos), each (h*w, rot_dim)
    _attention: dict = field(default_factory=dict, repr=False)  # layer -> (B, H, Q, N)
    _attention_grad: dict = field(default_factory=dict, repr=False)
    _qk: dict = field(default_factory=dict, repr=False)  # layer -> {"q", "k", "q_rot", "k_rot"}

    def _reset(self) -> None:
        self._attention.clear()
        self._attention_grad.clear()
        self._qk.clear()

    def cpu(self) -> Trace:
        """A float32 CPU copy, detached from any graph (what a UI session keeps)."""
        move = lambda t: t.detach().float().cpu()  # noqa: E731
        return Trace(layers=list(self.layers), cls_only=self.cls_only, grid=self.grid,
                     logits=None if self.logits is None else move(self.logits),
                     rotary=None if self.rotary is None else tuple(move(t) for t in self.rotary),
                     _attention={i: move(t) for i, t in self._attention.items()},
                     _attention_grad={i: move(t) for i, t in self._attention_grad.items()},
                     _qk={i: {k: move(v) for k, v in r.items() if k != "pos_emb"} for i, r in self._qk.items()})

    def _stack(self, store: dict, what: str) -> torch.Tensor:
        missing = [i for i in self.layers if i not in store]
        if missing:
            raise RuntimeError(f"no {what} recorded for layers {missing}: run the model inside the capture"
                               + (" and call backward()" if what == "attention gradients" else ""))
        return torch.stack([store[i] for i in self.layers])

    @property
    def attention(self) -> torch.Tensor:
        """(L, B, H, N, N) attention probabilities; (L, B, H, 1, N) with cls_only."""
        return self._stack(self._attention, "attention")

    @property
    def attention_grad(self) -> torch.Tensor:
        """Gradient of the backward()'s target w.r.t. the full attention, (L, B, H, N, N)."""
        return self._stack(self._attention_grad, "attention gradients")

    def qk(self, which: str) -> torch.Tensor:
        """'q' | 'k' (before rotation) | 'q_rot' | 'k_rot' (after): (L, B, H, N, dim_head), CLS first."""
        return self._stack({i: v[which] for i, v in self._qk.items() if which in v}, f"{which} (qk=True?)")


def attention_blocks(model: nn.Module) -> list[nn.Module]:
    """The attention module of every layer, checked to look like an RvT's."""
    try:
        blocks = [layer[0] for layer in model.transformer.layers]
        model.transformer.pos_emb  # noqa: B018  (must exist)
    except (AttributeError, TypeError, IndexError):
        raise TypeError(f"{type(model).__name__} is not an RvT: expected transformer.layers[i][0] attention "
                        f"modules and transformer.pos_emb") from None
    for block in blocks:
        if not all(hasattr(block, a) for a in ("attend", "heads", "to_q", "to_kv", "to_out")):
            raise TypeError(f"{type(block).__name__} lacks attend/heads/to_q/to_kv/to_out: not an RvT attention")
    return blocks


def _as_table(t: torch.Tensor) -> torch.Tensor:
    # vit-pytorch returns (1, N, d); this project's model (N, d).
    return t.reshape(-1, t.shape[-1])


@contextlib.contextmanager
def capture(model: nn.Module, *, layers: list[int] | None = None, cls_only: bool = False,
            dtype: torch.dtype | None = None, qk: bool = False, grads: bool = False):
    """Record the next forward passes of `model` into a Trace (the last pass wins).

    layers: which layers to keep (default all); cls_only: keep only the CLS query row;
    dtype: store a lower-precision copy (e.g. torch.float16); qk: keep q and k before and after
    rotation; grads: keep attention gradients for gradient rollout (needs a backward inside or
    after the capture, on a forward with gradients enabled).
    """
    blocks = attention_blocks(model)
    chosen = list(range(len(blocks))) if layers is None else sorted(set(int(i) for i in layers))
    bad = [i for i in chosen if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{len(blocks) - 1}")
    trace = Trace(layers=chosen, cls_only=cls_only)
    patch_size = model.patch_size

    def start(_module, args):
        trace._reset()
        h, w = args[0].shape[-2:]
        trace.grid = (h // patch_size, w // patch_size)

    def finish(_module, _args, output):
        trace.logits = output.detach()

    def rotary(_module, _args, output):
        sin, cos = output
        trace.rotary = (_as_table(sin).detach(), _as_table(cos).detach())

    def keep(t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(dtype) if dtype is not None else t

    def attention(index, block, _module, _args, output):
        probs = output.reshape(-1, block.heads, *output.shape[-2:])  # (B, H, N, N); vit-pytorch has (B*H)
        trace._attention[index] = keep(probs[:, :, :1] if cls_only else probs)
        if grads:
            if not probs.requires_grad:
                raise RuntimeError("capture(grads=True) needs a forward with gradients enabled "
                                   "(an input with requires_grad=True, outside torch.no_grad)")
            # The hook goes on the module's own output: a view of it is not on the backward path.
            output.register_hook(lambda g: trace._attention_grad.__setitem__(index, g.detach().reshape(probs.shape)))

    def layer_input(index, _module, _args, kwargs):
        trace._qk.setdefault(index, {})["pos_emb"] = kwargs.get("pos_emb")

    def queries(index, block, _module, _args, output):
        trace._qk[index]["q"] = rearrange(output, "b n (h d) -> b h n d", h=block.heads)

    def keys(index, block, _module, _args, output):
        record = trace._qk[index]
        record["k"] = rearrange(output.chunk(2, dim=-1)[0], "b n (h d) -> b h n d", h=block.heads)
        q, k = record["q"], record["k"]
        if block.use_rotary:
            sin, cos = (_as_table(t) for t in record.pop("pos_emb"))
            q = torch.cat((q[:, :, :1], apply_rotary(q[:, :, 1:], sin, cos)), dim=2)
            k = torch.cat((k[:, :, :1], apply_rotary(k[:, :, 1:], sin, cos)), dim=2)
        else:
            record.pop("pos_emb")
        record.update(q=keep(record["q"]), k=keep(record["k"]), q_rot=keep(q), k_rot=keep(k))

    handles, fused_before = [], {}
    try:
        handles.append(model.register_forward_pre_hook(start))
        handles.append(model.register_forward_hook(finish))
        handles.append(model.transformer.pos_emb.register_forward_hook(rotary))
        for i in chosen:
            block = blocks[i]
            if hasattr(block, "fused"):
                fused_before[block] = block.fused
                block.fused = False
            handles.append(block.attend.register_forward_hook(partial(attention, i, block)))
            if qk:
                handles.append(block.register_forward_pre_hook(partial(layer_input, i), with_kwargs=True))
                handles.append(block.to_q.register_forward_hook(partial(queries, i, block)))
                handles.append(block.to_kv.register_forward_hook(partial(keys, i, block)))
        yield trace
    finally:
        for handle in handles:
            handle.remove()
        for block, fused in fused_before.items():
            block.fused = fused

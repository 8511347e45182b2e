"""Scoped capture of what an RvT computes: attention probabilities, rotary tables, q/k.

    with capture(model) as trace:
        logits = model(x)
    trace.attention  # (L, B, H, N, N), CLS first, rows sum to 1 (a new stacked copy)
    trace.layer_attention(0)  # (B, H, N, N) of layer 0, the stored tensor itself

Panels read one layer at a time (`layer_attention`, `attention_layers`): stacking copies every
map, which at 224 px on the bundled model is 0.9 GB. `head_stats=True` reduces each layer's
attention to per-head statistics while its fp32 scores are at hand, so nothing has to re-read
the stored maps for them.

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

from .grid import patch_grid
from .rotary import apply_rotary

STATISTICS = ("mean_distance_px", "entropy_nats", "cls_share")
# capture(recompute=True) computes attention in blocks of query rows of about this many float32
# scores (8 MB): big enough for the GEMM, small enough to stay in cache through softmax and statistics.
BLOCK_ELEMENTS = 2 ** 21


def patch_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(h*w, h*w) Euclidean distances in pixels between patch centres, row-major patches."""
    h, w = grid
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    centres = torch.stack((ys.flatten(), xs.flatten()), dim=-1).float() * patch_size
    return torch.cdist(centres, centres)


def token_distances(grid: tuple[int, int], patch_size: int) -> torch.Tensor:
    """(N, N) `patch_distances` with a zero row and column in front for CLS, to weight whole attention rows."""
    return torch.nn.functional.pad(patch_distances(grid, patch_size), (1, 0, 1, 0))


def row_statistics(probs: torch.Tensor, distances: torch.Tensor,
                   scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per query row of one layer's attention, each (B, H, Q): what `head_statistics` averages.

    probs: (B, H, Q, N) softmax rows (any Q query rows); distances: the matching (Q, N) rows of
    `token_distances`; scores: the softmax's input z, same shape as probs, or None.
    mean_distance_px: the row's attention-weighted distance to patch keys, CLS left out and the
    rest renormalised (ViT paper, Fig. 7); entropy_nats; cls_share: the row's attention on CLS.
    With scores, entropy uses log p = z - logsumexp(z), with logsumexp = max z - log max p: no
    logarithm per entry, and on float32 maps each pass reads them once and allocates none.
    """
    p = probs.float()
    mass = p.sum(-1)  # (B, H, Q)
    reach = torch.einsum("bhij,ij->bhi", p, distances)
    distance = reach / (mass - p[..., 0]).clamp_min(1e-12)
    if scores is None:
        q = p.clamp_min(1e-12)
        entropy = -torch.einsum("bhij,bhij->bhi", q, q.log())
    else:
        z = scores.float()
        lse = z.amax(-1) - p.amax(-1).log()  # (B, H, Q)
        entropy = lse * mass - torch.einsum("bhij,bhij->bhi", p, z)
    return {"mean_distance_px": distance, "entropy_nats": entropy, "cls_share": p[..., 0].clone()}  # not a view


def average_rows(rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`row_statistics` of all N rows (CLS first) -> (B, H): patch queries for distance and CLS share, every
    query for entropy."""
    return {"mean_distance_px": rows["mean_distance_px"][..., 1:].mean(-1),
            "entropy_nats": rows["entropy_nats"].mean(-1), "cls_share": rows["cls_share"][..., 1:].mean(-1)}


def head_statistics(probs: torch.Tensor, distances: torch.Tensor,
                    scores: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Per-head statistics of one layer's attention probs (B, H, N, N), each (B, H), averaged over
    query rows (see `row_statistics`); distances: (N, N) from `token_distances`."""
    return average_rows(row_statistics(probs, distances, scores))


@dataclass
class AttentionGradients:
    """d(target)/d(attention) of every layer, kept as two (B, H, N, d) factors per layer.

    An attention output is A v, so the gradient with respect to the map A is grad_out v^T: built
    by indexing, one (B, H, N, N) layer at a time, never all layers at once. `shape` is that of
    the stacked maps; `full()` stacks them (tests, export).
    """

    grad_out: list[torch.Tensor]  # per layer (B, H, N, d): gradient w.r.t. the attention output A v
    values: list[torch.Tensor]  # per layer (B, H, N, d): v

    def __len__(self) -> int:
        return len(self.values)

    def __getitem__(self, layer: int) -> torch.Tensor:
        """(B, H, N, N) float32 gradient w.r.t. the attention map of the `layer`-th recorded layer."""
        return self.grad_out[layer].float() @ self.values[layer].float().transpose(-1, -2)

    @property
    def shape(self) -> torch.Size:
        b, h, n, _ = self.values[0].shape
        return torch.Size((len(self), b, h, n, n))

    def full(self) -> torch.Tensor:
        """(L, B, H, N, N) stacked."""
        return torch.stack([self[i] for i in range(len(self))])


@dataclass
class Trace:
    """What one forward pass computed. Per-layer tensors are stacked in `layers` order."""

    layers: list[int]
    cls_only: bool = False
    grid: tuple[int, int] | None = None  # (h, w) patch grid of the last forward
    logits: torch.Tensor | None = None  # (B, classes)
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # (sin, cos), each (h*w, rot_dim)
    _attention: dict = field(default_factory=dict, repr=False)  # layer -> (B, H, Q, N)
    _head_stats: dict = field(default_factory=dict, repr=False)  # layer -> {statistic: (B, H)}
    _attention_grad: dict = field(default_factory=dict, repr=False)
    _grad_factors: dict = field(default_factory=dict, repr=False)  # layer -> {"v", "grad_out"}, each (B, H, N, d)
    _qk: dict = field(default_factory=dict, repr=False)  # layer -> {"q", "k", "q_rot", "k_rot"}

    def _reset(self) -> None:
        self._attention.clear()
        self._head_stats.clear()
        self._attention_grad.clear()
        self._grad_factors.clear()
        self._qk.clear()

    def cpu(self, attention_dtype: torch.dtype = torch.float32) -> Trace:
        """A CPU copy, detached from any graph (what a UI session keeps): float32, attention in
        `attention_dtype` (float16 halves what large analyses hold). Tensors already there are not copied."""
        move = lambda t: t.detach().float().cpu()  # noqa: E731
        return Trace(layers=list(self.layers), cls_only=self.cls_only, grid=self.grid,
                     logits=None if self.logits is None else move(self.logits),
                     rotary=None if self.rotary is None else tuple(move(t) for t in self.rotary),
                     _attention={i: t.detach().to("cpu", attention_dtype) for i, t in self._attention.items()},
                     _head_stats={i: {k: move(v) for k, v in r.items()} for i, r in self._head_stats.items()},
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
        """(L, B, H, N, N) attention probabilities; (L, B, H, 1, N) with cls_only. A new stacked copy:
        panels use `layer_attention` / `attention_layers` instead."""
        return self._stack(self._attention, "attention")

    def layer_attention(self, layer: int) -> torch.Tensor:
        """(B, H, N, N) (or (B, H, 1, N) with cls_only) attention of model layer `layer`: the stored tensor."""
        if layer not in self._attention:
            raise RuntimeError(f"no attention recorded for layer {layer}: recorded layers {sorted(self._attention)}")
        return self._attention[layer]

    @property
    def attention_layers(self) -> list[torch.Tensor]:
        """Every recorded layer's (B, H, Q, N) attention in `layers` order, without copying."""
        return [self.layer_attention(i) for i in self.layers]

    @property
    def head_stats(self) -> dict[str, torch.Tensor] | None:
        """{statistic: (L, H)} averaged over the batch (see `head_statistics`); None unless captured with
        head_stats=True."""
        if any(i not in self._head_stats for i in self.layers):
            return None
        return {name: torch.stack([self._head_stats[i][name].mean(0) for i in self.layers]) for name in STATISTICS}

    @property
    def attention_grad(self) -> torch.Tensor:
        """Gradient of the backward()'s target w.r.t. the full attention, (L, B, H, N, N)."""
        return self._stack(self._attention_grad, "attention gradients")

    def attention_grad_layer(self, layer: int) -> torch.Tensor:
        """(B, H, N, N) attention gradient of model layer `layer`."""
        if layer not in self._attention_grad:
            raise RuntimeError(f"no attention gradient recorded for layer {layer}: call backward() after the forward")
        return self._attention_grad[layer]

    def attention_grad_factors(self) -> AttentionGradients:
        """The attention gradients as factors (capture(grad_factors=True) and a backward): see `AttentionGradients`."""
        missing = [i for i in self.layers if "grad_out" not in self._grad_factors.get(i, {})]
        if missing:
            raise RuntimeError(f"no attention gradients recorded for layers {missing}: capture with "
                               f"grad_factors=True, on a forward with gradients enabled, and call backward()")
        return AttentionGradients(grad_out=[self._grad_factors[i]["grad_out"] for i in self.layers],
                                  values=[self._grad_factors[i]["v"] for i in self.layers])

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
            dtype: torch.dtype | None = None, qk: bool = False, grads: bool = False, head_stats: bool = False,
            recompute: bool = False, grad_factors: bool = False):
    """Record the next forward passes of `model` into a Trace (the last pass wins).

    layers: which layers to keep (default all); cls_only: keep only the CLS query row (a copy of
    it: a view would keep the whole (B, H, N, N) alive); dtype: store a lower-precision copy (e.g.
    torch.float16); qk: keep q and k before and after rotation; grads: keep attention gradients for
    gradient rollout (needs a backward inside or after the capture, on a forward with gradients
    enabled); head_stats: reduce each layer to `head_statistics` (read with `trace.head_stats`).

    recompute: the model keeps its fused attention kernel, and the capture computes the
    probabilities from the layer's rotated q and k itself, softmax(q k^T * scale), in blocks of
    query rows written straight into the stored (dtype) maps; the statistics are taken from each
    block while it is in cache. No float32 (H, N, N) map is ever materialised: at 224 px on the
    bundled model this halves the pass and its peak memory. Equal to the softmax the explicit path
    computes up to float rounding (tested); inference only (not with grads).

    grad_factors: keep each layer's v and, after a backward, the gradient with respect to the
    attention output A v (`trace.attention_grad_factors()`): the gradient with respect to the map
    is their product, so the model keeps its fused kernel and its backward, and no layer's
    (H, N, N) gradient exists until a panel asks for it. Enter it after `intervene`, so that it
    sees head outputs before silencing (whose gradient is then 0, as for the map).
    """
    if recompute and grads:
        raise ValueError("capture(recompute=True) computes attention outside the model's graph: "
                         "attention gradients need recompute=False")
    if grad_factors and (grads or recompute):
        raise ValueError("capture(grad_factors=True) records gradients without attention maps: "
                         "not with grads or recompute")
    blocks = attention_blocks(model)
    chosen = list(range(len(blocks))) if layers is None else sorted(set(int(i) for i in layers))
    bad = [i for i in chosen if not 0 <= i < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has layers 0..{len(blocks) - 1}")
    trace = Trace(layers=chosen, cls_only=cls_only)
    patch_size = model.patch_size
    distances = {}  # grid -> (N, N), built once per grid for head_stats

    def start(_module, args):
        trace._reset()
        trace.grid = patch_grid(args[0].shape[-2:], patch_size)
        if head_stats and trace.grid not in distances:
            distances.clear()
            distances[trace.grid] = token_distances(trace.grid, patch_size).to(args[0].device)

    def finish(_module, _args, output):
        trace.logits = output.detach()

    def rotary(_module, _args, output):
        sin, cos = output
        trace.rotary = (_as_table(sin).detach(), _as_table(cos).detach())

    def keep(t: torch.Tensor, copy: bool = False) -> torch.Tensor:
        return t.detach().to(dtype or t.dtype, copy=copy)

    def attention(index, block, _module, args, output):
        probs = output.reshape(-1, block.heads, *output.shape[-2:])  # (B, H, N, N); vit-pytorch has (B*H)
        trace._attention[index] = keep(probs[:, :, :1], copy=True) if cls_only else keep(probs)
        if head_stats:
            with torch.no_grad():
                trace._head_stats[index] = head_statistics(probs.detach(), distances[trace.grid],
                                                           args[0].detach().reshape(probs.shape))
        if grads:
            if not probs.requires_grad:
                raise RuntimeError("capture(grads=True) needs a forward with gradients enabled "
                                   "(an input with requires_grad=True, outside torch.no_grad)")
            # The hook goes on the module's own output: a view of it is not on the backward path.
            # Closes over the shape only: holding `probs` would keep every layer's maps alive through the backward.
            shape = probs.shape
            output.register_hook(lambda g: trace._attention_grad.__setitem__(index, g.detach().reshape(shape)))

    def from_qk(index, q, k, scale):
        """Softmax rows of (q * scale) k^T, BLOCK_ELEMENTS at a time, into the stored maps (and statistics)."""
        b, h, n, _ = q.shape
        stored = torch.empty(b, h, 1 if cls_only else n, n, dtype=dtype or torch.float32, device=q.device)
        q, keys_t = q.float() * scale, k.float().transpose(-1, -2)
        rows = n if head_stats or not cls_only else 1
        block = min(rows, max(1, BLOCK_ELEMENTS // (b * h * n)))
        # Two buffers reused by every block: allocating each block anew fragments the heap (blocks are
        # under glibc's mmap threshold) and leaves freed memory in the process's RSS.
        score_buffer, prob_buffer = (torch.empty(b * h * block * n, device=q.device) for _ in range(2))
        parts = []
        for first in range(0, rows, block):
            size = (b, h, min(block, rows - first), n)
            scores = torch.matmul(q[:, :, first:first + block], keys_t,
                                  out=score_buffer[:size[0] * size[1] * size[2] * n].view(size))  # (B, H, rows, N)
            probs = prob_buffer[:scores.numel()].view(size)
            torch.sub(scores, scores.amax(-1, keepdim=True), out=probs).exp_()  # softmax, in the buffer
            probs.div_(probs.sum(-1, keepdim=True))
            if head_stats:
                parts.append(row_statistics(probs, distances[trace.grid][first:first + block], scores))
            if first < stored.shape[2]:
                stored[:, :, first:first + block] = probs[:, :, :stored.shape[2] - first]
        trace._attention[index] = stored
        if head_stats:
            trace._head_stats[index] = average_rows({name: torch.cat([p[name] for p in parts], dim=-1)
                                                    for name in STATISTICS})

    def attention_output(index, _module, args):
        out = args[0]  # (B, N, H*d): the heads' A v, before the output projection
        if not out.requires_grad:
            raise RuntimeError("capture(grad_factors=True) needs a forward with gradients enabled "
                               "(an input with requires_grad=True, outside torch.no_grad)")
        heads = trace._grad_factors[index]["v"].shape[1]
        out.register_hook(lambda g: trace._grad_factors[index].__setitem__(
            "grad_out", rearrange(g.detach(), "b n (h d) -> b h n d", h=heads)))

    def values(index, block, _module, _args, output):
        v = output.chunk(2, dim=-1)[1].detach()
        trace._grad_factors[index] = {"v": rearrange(v, "b n (h d) -> b h n d", h=block.heads)}

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
        if recompute:
            with torch.no_grad():
                from_qk(index, q.detach(), k.detach(), block.scale)
        if qk:
            record.update(q=keep(record["q"]), k=keep(record["k"]), q_rot=keep(q), k_rot=keep(k))
        else:
            del trace._qk[index]

    handles, fused_before = [], {}
    try:
        handles.append(model.register_forward_pre_hook(start))
        handles.append(model.register_forward_hook(finish))
        handles.append(model.transformer.pos_emb.register_forward_hook(rotary))
        for i in chosen:
            block = blocks[i]
            if grad_factors:
                handles.append(block.to_kv.register_forward_hook(partial(values, i, block)))
                handles.append(block.to_out.register_forward_pre_hook(partial(attention_output, i), prepend=True))
            if not (recompute or grad_factors):
                if hasattr(block, "fused"):
                    fused_before[block] = block.fused
                    block.fused = False
                handles.append(block.attend.register_forward_hook(partial(attention, i, block)))
            if qk or recompute:
                handles.append(block.register_forward_pre_hook(partial(layer_input, i), with_kwargs=True))
                handles.append(block.to_q.register_forward_hook(partial(queries, i, block)))
                handles.append(block.to_kv.register_forward_hook(partial(keys, i, block)))
        yield trace
    finally:
        for handle in handles:
            handle.remove()
        for block, fused in fused_before.items():
            block.fused = fused

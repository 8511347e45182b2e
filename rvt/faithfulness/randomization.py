"""Cascading model randomisation (Adebayo et al. 2018, "Sanity Checks for Saliency Maps").

Re-initialise the model from the top, one stage at a time and cumulatively: the classifier head,
then each transformer layer from the last, then the patch embedding and CLS token. After each stage,
compare every method's map with the trained model's by Spearman rank correlation of |map|. A map
that barely changes while what the model learned is destroyed explains the input, not the model.

The caller's model is never touched: the randomised models are seeded deep copies, cached per model
(keyed by a hash of its weights) so that the next image reuses them.
"""
from __future__ import annotations

import copy
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..preprocess import Preprocess
from .methods import ALL_METHODS, Explainer, MapSettings, explain, tensor_key

THRESHOLD = 0.5  # mean |Spearman| over the cascade below this: the map follows the weights
RULE = ("passes when the Spearman rank correlation of |map| with the trained model's map, averaged (in absolute "
        f"value) over the cascade (head, each layer from the top, embedding), is below {THRESHOLD}: a map that "
        "survives losing what the model learned explains the input rather than the model")
_CACHE_SIZE = 2  # models whose randomised cascades stay in memory (the bundled one: 8 copies of 2.3 MB)
_cascades: OrderedDict = OrderedDict()
_lock = threading.Lock()


def model_key(model: nn.Module) -> str:
    """A hash of the model's class and weights: equal for copies, different after any weight changes."""
    state = model.state_dict()
    return tensor_key(*state.values(), salt=f"{type(model).__name__}|{'|'.join(state)}")


def stages(model: nn.Module) -> list[tuple[str, list[nn.Module | nn.Parameter]]]:
    """The cascade's stages, top first: (name, what it re-initialises)."""
    try:
        layers = list(model.transformer.layers)
        head, embedding, cls_token = model.mlp_head, model.to_patch_embedding, model.cls_token
    except AttributeError:
        raise TypeError(f"{type(model).__name__} is not an RvT: the randomisation cascade needs mlp_head, "
                        f"transformer.layers, to_patch_embedding and cls_token") from None
    return [("classifier head", [head]),
            *[(f"layer {i}", [layers[i]]) for i in reversed(range(len(layers)))],
            ("embedding", [embedding, cls_token])]


def _reinit(part: nn.Module | nn.Parameter, generator: torch.Generator) -> None:
    """PyTorch's default initialisation of each weight, drawn from `generator` (the global RNG is left alone)."""
    if isinstance(part, nn.Parameter):
        nn.init.normal_(part, generator=generator)  # the CLS token starts as randn
        return
    for module in part.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            nn.init.kaiming_uniform_(module.weight, a=math.sqrt(5), generator=generator)
            if module.bias is not None:
                bound = 1 / math.sqrt(nn.init._calculate_fan_in_and_fan_out(module.weight)[0])
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.LayerNorm):
            module.reset_parameters()
        elif own:
            raise TypeError(f"cannot re-initialise {type(module).__name__}: only Linear, Conv2d and LayerNorm")


def _clean_copy(model: nn.Module) -> nn.Module:
    twin = copy.deepcopy(model).eval()
    for module in twin.modules():  # a copy taken during someone's capture must not keep their hooks
        module._forward_hooks.clear()
        module._forward_pre_hooks.clear()
        module._backward_hooks.clear()
    return twin


def randomized_cascade(model: nn.Module, seed: int = 0) -> list[tuple[str, nn.Module]]:
    """[(stage name, model with that stage and all above it re-initialised)], top first; cached per model."""
    key = (model_key(model), seed)
    with _lock:
        if key in _cascades:
            _cascades.move_to_end(key)
            return _cascades[key]
    generator = torch.Generator().manual_seed(seed)
    current, cascade = _clean_copy(model), []
    with torch.no_grad():
        for name, _ in stages(model):
            current = copy.deepcopy(current)
            for part in dict(stages(current))[name]:
                _reinit(part, generator)
            cascade.append((name, current))
    with _lock:
        _cascades[key] = cascade
        while len(_cascades) > _CACHE_SIZE:
            _cascades.popitem(last=False)
    return cascade


def clear_cascades() -> None:
    with _lock:
        _cascades.clear()


def _average_ranks(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    _, first, counts = np.unique(values[order], return_index=True, return_counts=True)
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(first + (counts - 1) / 2, counts)  # ties share their mean rank
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps of the same shape (ties get average ranks); 0 for a constant map."""
    if a.shape != b.shape:
        raise ValueError(f"maps of different shapes {tuple(a.shape)} and {tuple(b.shape)}")
    ra, rb = (_average_ranks(t.detach().double().flatten().cpu().numpy()) for t in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = math.sqrt(float((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / norm) if norm > 0 else 0.0


@dataclass
class Randomization:
    stages: list[str]  # top first: "classifier head", "layer L-1", ..., "layer 0", "embedding"
    spearman: dict[str, list[float]]  # method -> Spearman of |map| against the trained map, per stage
    threshold: float = THRESHOLD

    def final(self, method: str) -> float:
        """After everything is randomised."""
        return self.spearman[method][-1]

    def mean_abs(self, method: str) -> float:
        return float(np.mean(np.abs(self.spearman[method])))

    def passes(self, method: str) -> bool:
        return self.mean_abs(method) < self.threshold


def randomization_check(model: nn.Module, x: torch.Tensor, target: int, preprocess: Preprocess,
                        methods: Iterable[str] = ALL_METHODS, settings: MapSettings = MapSettings(), *,
                        trained: Mapping[str, torch.Tensor] | None = None, extra: Mapping[str, Explainer] | None = None,
                        patch_size: int | None = None, progress: Callable[[float], None] | None = None,
                        check: Callable[[], None] | None = None) -> Randomization:
    """The cascade for one normalised image x (1, C, H, W) and class `target` (see module docstring).

    trained: the trained model's maps if already computed (e.g. by the scorecard); progress gets the
    fraction of stages done; check is called between passes and raises to cancel.
    """
    methods = list(methods)
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one normalised image (1, C, H, W), got {tuple(x.shape)}")
    patch_size = patch_size or model.patch_size
    run = lambda m: explain(m, x, target, preprocess, methods, settings, patch_size=patch_size,  # noqa: E731
                            extra=extra, check=check)
    trained = dict(trained) if trained is not None and set(methods) <= set(trained) else run(model)
    cascade = randomized_cascade(model, settings.seed)
    curves = {m: [] for m in methods}
    for i, (_, randomized) in enumerate(cascade):
        maps = run(randomized)
        for m in methods:
            curves[m].append(spearman(trained[m].abs(), maps[m].abs()))
        if progress is not None:
            progress((i + 1) / len(cascade))
    return Randomization(stages=[name for name, _ in cascade], spearman=curves)

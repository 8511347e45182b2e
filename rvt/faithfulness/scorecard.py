"""The scorecard: every method x every metric for one image, cached so a second look is free."""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from torch import nn

from viz.attributions import BASELINES, describe_baseline

from ..preprocess import Preprocess
from .curves import Curves, deletion_insertion
from .methods import ALL_METHODS, RANDOM, ROLLOUTS, SINGLE_PASS, SMOOTHGRAD, Explainer, MapSettings, explain, tensor_key
from .metrics import infidelity_scores, sensitivity_scores
from .randomization import RULE, Randomization, clear_cascades, model_key, randomization_check

# Metric -> (direction, how to read it). Shown beside the table and written to the export.
READING = {
    "deletion_auc": ("lower", "patches replaced by the fill in the map's order, most important first: the class "
                              "probability falls fast (small area) when the map found what the model uses"),
    "insertion_auc": ("higher", "patches put back onto the fill in the map's order: the probability rises fast "
                                "(large area) when the map's top patches are enough for the model"),
    "randomization_spearman": ("closer to 0", "Spearman of |map| with the trained model's map once every weight is "
                                        "random; the pass/fail check averages |Spearman| over the whole cascade"),
    "infidelity": ("lower", "squared gap between the logit change the map predicts and the real one when random "
                            "patches are replaced by the fill (map rescaled by the best factor)"),
    "sensitivity": ("lower", "largest relative change of the map under tiny input noise; only for one-pass "
                             "methods; a map that ignores the input scores 0 here, so read it with the others"),
}
NOTES = {  # method -> what to keep in mind when reading its row; see `method_note`
    **{m: "class-agnostic: the same map for every class, blind to the classifier head" for m in ROLLOUTS},
    "Gradient rollout": "attention times its gradient for the class (positive part), rolled out over the layers",
    "CLS attention (last layer)": "one layer's CLS attention, heads averaged: where the last layer looks, not why",
    "Saliency": "the raw gradient: local sensitivity, ranked by magnitude",
    "SmoothGrad": "the gradient averaged over noisy copies, ranked by magnitude",
    "SmoothGrad squared": "mean squared gradient over noisy copies: always positive",
    "VarGrad": "variance of the gradient over noisy copies: always positive",
    RANDOM: "a fixed random ranking of the patches: the floor every method should beat",
}
BASELINE_METHODS = ("Integrated Gradients", "Occlusion", "GradientShap")
CAVEAT = ("The metrics can disagree: a map can win deletion and fail the randomisation check, and a black fill "
          "favours maps that point at bright pixels. Read the columns together; none of them alone says a map is "
          "right.")


def method_note(method: str, baseline: str = "black") -> str:
    """One line on what to keep in mind about `method`'s map (e.g. under the map in the app)."""
    if method in BASELINE_METHODS:
        if baseline in ("black", "mean"):
            return (f"against a flat {baseline} baseline: zero wherever the input equals it (for black, the "
                    f"background), so part of its shape is the input's whatever the weights")
        return f"against a {baseline} baseline that differs from the input everywhere"
    return NOTES.get(method, "a further method")


@dataclass(frozen=True)
class FaithfulnessConfig:
    maps: MapSettings = field(default_factory=MapSettings)
    fills: tuple[str, ...] = ("black",)  # the first is the scorecard's; "blur" adds its curves (twice the passes)
    steps: int | None = None  # points per curve after the start: one per patch up to 25
    infidelity_samples: int = 32  # forward passes only, shared by every method
    infidelity_drop: float = 0.25  # each patch replaced by the fill with this probability
    sensitivity_samples: int = 8  # re-runs of each one-pass method
    sensitivity_radius: float = 0.02  # captum's default: about 2 grey levels out of 255 for Fashion-MNIST


@dataclass
class Scorecard:
    methods: list[str]
    target: int
    config: FaithfulnessConfig
    maps: dict[str, torch.Tensor]  # the trained model's maps: (1, h, w) per patch or (1, C, H, W) per pixel
    curves: dict[str, Curves]  # fill -> curves
    randomization: Randomization
    infidelity: dict[str, float]
    sensitivity: dict[str, float]  # one-pass methods only
    baseline: str  # the attribution baseline in words
    seconds: float = 0.0  # thread CPU time the computation took (0 when served from the cache)

    @property
    def fill(self) -> str:
        return self.config.fills[0]

    def row(self, method: str) -> dict:
        """The numbers of one method: AUCs for the first fill, the randomisation result, the captum metrics."""
        curves = self.curves[self.fill]
        return {"deletion_auc": curves.deletion_auc(method), "insertion_auc": curves.insertion_auc(method),
                "randomization_spearman": self.randomization.final(method),
                "randomization_mean_abs": self.randomization.mean_abs(method),
                "passes_randomization": self.randomization.passes(method),
                "infidelity": self.infidelity.get(method), "sensitivity": self.sensitivity.get(method)}

    def best(self) -> dict[str, str]:
        """Metric -> the best method for it (the random floor excluded)."""
        rows = {m: self.row(m) for m in self.methods if m != RANDOM}
        best = {}
        for metric, (direction, _) in READING.items():
            scored = {m: r[metric] for m, r in rows.items() if r[metric] is not None}
            if direction == "closer to 0":
                scored = {m: abs(v) for m, v in scored.items()}
            if scored:
                best[metric] = (max if direction == "higher" else min)(scored, key=scored.get)
        return best

    def summary(self) -> dict:
        """The export's "faithfulness": method -> numbers; the random floor under "random"."""
        out = {}
        for method in self.methods:
            row = self.row(method)
            out[method] = {key: (None if value is None or (isinstance(value, float) and not np.isfinite(value))
                                 else value) for key, value in row.items()}
            for fill, curves in self.curves.items():
                out[method][f"deletion_auc_{fill}"] = curves.deletion_auc(method)
                out[method][f"insertion_auc_{fill}"] = curves.insertion_auc(method)
            out[method]["randomization_curve"] = self.randomization.spearman[method]
        return out

    def settings(self) -> dict:
        """What the numbers were computed with, in words and values, for the export."""
        return {"target": self.target, "fill": self.fill, "fills": list(self.config.fills),
                "attribution_baseline": self.baseline, "randomization_stages": self.randomization.stages,
                "randomization_rule": RULE, "reading": {k: f"{d} is better: {t}" for k, (d, t) in READING.items()},
                "caveat": CAVEAT, "config": asdict(self.config), "methods": self.method_settings()}

    def method_settings(self) -> dict[str, str]:
        """How the maps were computed, where it differs from a method's name alone."""
        maps = self.config.maps
        noisy = f"{maps.smooth_samples} copies with Gaussian noise of sigma {maps.smooth_stdev} (normalised units)"
        return {"Integrated Gradients": f"{maps.ig_steps} steps from {self.baseline}",
                "GradientShap": f"{maps.shap_samples} samples between {self.baseline} and the input",
                "Occlusion": f"one patch at a time (window = stride = patch), replaced by {self.baseline}",
                **{name: f"{how} of the Saliency gradient over {noisy}"
                   for name, how in zip(SMOOTHGRAD, ("mean", "mean square", "variance"))},
                RANDOM: f"patches in a fixed random order (seed {maps.seed})"}


_CACHE_SIZE = 16  # scorecards kept (a few images x a few fills)
_cache: OrderedDict = OrderedDict()
_lock = threading.Lock()


def clear_caches(randomized: bool = True) -> None:
    """Forget cached scorecards (and, by default, the randomised model copies), e.g. to free memory."""
    with _lock:
        _cache.clear()
    if randomized:
        clear_cascades()


def scorecard(model: nn.Module, x: torch.Tensor, target: int | None, preprocess: Preprocess,
              config: FaithfulnessConfig = FaithfulnessConfig(), *, methods: Iterable[str] = ALL_METHODS,
              extra: Mapping[str, Explainer] | None = None, patch_size: int | None = None,
              progress: Callable[[float], None] | None = None,
              check: Callable[[], None] | None = None) -> Scorecard:
    """Every method's map for class `target` (default: the predicted class) of a normalised x (1, C, H, W),
    scored by deletion and insertion (each fill), the randomisation cascade, infidelity and sensitivity.

    extra: further methods (name -> Explainer) that get the same checks. progress: fraction in [0, 1];
    check: called between passes, raises to cancel. Results are cached by model weights, input, class,
    methods and config; the randomised models by model weights.
    """
    methods = list(methods) + [m for m in (extra or {}) if m not in methods]
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one normalised image (1, C, H, W), got {tuple(x.shape)}")
    if not config.fills or any(f not in BASELINES for f in config.fills):
        raise ValueError(f"fills {config.fills} must be a non-empty choice of {', '.join(BASELINES)}")
    patch_size = patch_size or model.patch_size
    x = x.detach()
    if target is None:
        with torch.inference_mode():
            target = int(model(x).argmax())
    key = (model_key(model), tensor_key(x), int(target), tuple(methods), tuple(extra or {}), config, patch_size)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            if progress is not None:
                progress(1.0)
            return replace(_cache[key], seconds=0.0)  # the same numbers; no time spent on them
    card = _scorecard(model, x, int(target), preprocess, config, methods, dict(extra or {}), patch_size,
                      progress or (lambda fraction: None), check or (lambda: None))
    with _lock:
        _cache[key] = card
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return card


def _scorecard(model, x, target, preprocess, config, methods, extra, patch_size, progress, check):
    start = time.thread_time()
    settings = config.maps
    memo = {}
    progress(0.0)
    maps = explain(model, x, target, preprocess, methods, settings, patch_size=patch_size, extra=extra,
                   memo=memo, check=check)
    progress(0.1)
    randomization = randomization_check(model, x, target, preprocess, methods, settings, trained=maps, extra=extra,
                                        patch_size=patch_size, progress=lambda f: progress(0.1 + 0.6 * f),
                                        check=check)
    curves = {}
    for i, fill in enumerate(config.fills):
        curves[fill] = deletion_insertion(model, x, target, maps, preprocess, fill, patch_size=patch_size,
                                          steps=config.steps, batch_size=settings.batch_size, check=check)
        progress(0.7 + 0.2 * (i + 1) / len(config.fills))
    infidelity = infidelity_scores(model, x, target, maps, preprocess, config.fills[0],
                                   samples=config.infidelity_samples, drop=config.infidelity_drop,
                                   seed=settings.seed, patch_size=patch_size, check=check)
    sensitivity = sensitivity_scores(model, x, target, preprocess, [m for m in methods if m in SINGLE_PASS],
                                     settings, samples=config.sensitivity_samples, radius=config.sensitivity_radius,
                                     patch_size=patch_size, memo=memo, check=check)
    progress(1.0)
    return Scorecard(methods=methods, target=target, config=config, maps=maps, curves=curves,
                     randomization=randomization, infidelity=infidelity, sensitivity=sensitivity,
                     baseline=describe_baseline(settings.baseline, preprocess, tuple(x.shape[-2:])),
                     seconds=time.thread_time() - start)

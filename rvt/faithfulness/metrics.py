"""captum.metrics' infidelity and sensitivity, with the perturbations stated and shared by every method.

Infidelity (Yeh et al. 2019): E[(I . map - (f(x) - f(x - I)))^2] over perturbations I, here "each
patch replaced by the fill with probability `drop`"; maps are rescaled by the best factor first
(captum's normalize=True), so a map is judged by its shape, not its units. f is the class logit.
Sensitivity (max): the largest relative change ||map(x + d) - map(x)|| / ||map(x)|| over uniform
noise d in [-radius, radius] (normalised units); it re-runs the method per draw, so it is computed
only for methods that cost one pass.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from captum.metrics import infidelity, sensitivity_max
from torch import nn

from viz.attributions import baseline_input

from ..grid import patch_grid
from ..preprocess import Preprocess
from .curves import _pixels
from .methods import MapSettings, explain, pixel_attribution


def _forward_unique(model: nn.Module, check: Callable[[], None] | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """model(x) that runs identical images once (captum repeats the input per method and per draw)."""
    def forward(images: torch.Tensor) -> torch.Tensor:
        if check is not None:
            check()
        unique, inverse = torch.unique(images.flatten(1), dim=0, return_inverse=True)
        with torch.inference_mode():
            return model(unique.view(-1, *images.shape[1:])).float()[inverse]
    return forward


def infidelity_scores(model: nn.Module, x: torch.Tensor, target: int, maps: Mapping[str, torch.Tensor],
                      preprocess: Preprocess, fill: str = "black", *, samples: int = 32, drop: float = 0.25,
                      seed: int = 0, patch_size: int | None = None,
                      check: Callable[[], None] | None = None) -> dict[str, float]:
    """Infidelity of each map (lower is better) for a normalised x (1, C, H, W); same draws for every map."""
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one normalised image (1, C, H, W), got {tuple(x.shape)}")
    if not 0 < drop < 1:
        raise ValueError(f"drop must be a probability in (0, 1), not {drop}")
    patch_size = patch_size or model.patch_size
    grid = patch_grid(x.shape[-2:], patch_size)
    names = list(maps)
    reference = baseline_input(x, fill, preprocess)

    def perturb(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # captum repeats each example `samples` times in a row: draw `samples` masks, the same for every map.
        generator = torch.Generator().manual_seed(seed)
        masks = torch.rand((samples, grid[0] * grid[1]), generator=generator) < drop
        where = _pixels(masks, grid, x.shape[-2:]).repeat(inputs.shape[0] // samples, 1, 1, 1).to(inputs.device)
        perturbed = torch.where(where, reference, inputs)
        return inputs - perturbed, perturbed

    attributions = torch.cat([pixel_attribution(maps[m].float().to(x.device), x.shape) for m in names])  # (M, C, H, W)
    scores = infidelity(_forward_unique(model, check), perturb, x.detach().expand(len(names), -1, -1, -1),
                        attributions, target=target, n_perturb_samples=samples, normalize=True)
    return dict(zip(names, scores.tolist()))


def sensitivity_scores(model: nn.Module, x: torch.Tensor, target: int, preprocess: Preprocess,
                       methods: Iterable[str], settings: MapSettings = MapSettings(), *, samples: int = 8,
                       radius: float = 0.02, patch_size: int | None = None, memo: dict | None = None,
                       check: Callable[[], None] | None = None) -> dict[str, float]:
    """captum's sensitivity_max of each method (lower is steadier) for a normalised x (1, C, H, W).

    Every method sees the same noisy copies, so the methods that share a pass (the rollouts, gradient
    rollout, CLS attention) compute it once through `memo`.
    """
    if x.dim() != 4 or x.shape[0] != 1:
        raise ValueError(f"expected one normalised image (1, C, H, W), got {tuple(x.shape)}")
    memo = {} if memo is None else memo

    def perturb(inputs: torch.Tensor, perturb_radius: float) -> torch.Tensor:
        generator = torch.Generator().manual_seed(settings.seed)
        noise = torch.rand(inputs.shape, generator=generator) * 2 - 1
        return inputs + perturb_radius * noise.to(inputs)

    scores = {}
    for name in methods:
        # captum passes the unperturbed input as a 1-tuple and iterates over what comes back: give tuples.
        explain_one = lambda inputs, name=name: (explain(  # noqa: E731
            model, inputs[0] if isinstance(inputs, tuple) else inputs, target, preprocess, [name], settings,
            patch_size=patch_size, memo=memo, check=check)[name],)
        scores[name] = float(sensitivity_max(explain_one, x.detach(), perturb_func=perturb, perturb_radius=radius,
                                             n_perturb_samples=samples)[0])
    return scores

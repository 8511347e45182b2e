"""Rotary lab: 2-D rotary frequency schedules, their phase tables, steps, kernels and band usage.

A schedule gives every rotated pair p of a head a frequency along rows and along columns,
`scales` (pairs, 2); the pair's angle at patch (r, c) is `(pos_r * scales[p, 0] + pos_c * scales[p, 1]) * unit`.

- RvT (vit-pytorch): axial, positions linspace(-1, 1, n) per axis, scales linspace(1, max_freq / 2,
  dim_head // 4), unit pi. The first dim_head // 4 pairs encode the row, the next the column.
- RoPE (axial 2-D, as in RoPE-ViT): integer positions 0..n-1, frequencies base ** (-4 i / dim_head), unit 1.
- RoPE-Mixed (RoPE-ViT): integer positions, each pair rotates along its own direction in the
  (row, column) plane with RoPE's magnitudes; directions random (seeded) or read from a checkpoint.
- The loaded model's own: RvT's formula with the scales stored in `transformer.pos_emb.scales`.

Normalised positions make a larger grid shrink the step per patch (RvT interpolates); integer
positions keep the step and reach angles never seen in training (RoPE extrapolates), which position
interpolation, NTK-aware base scaling and YaRN-style per-band scaling counter.

Above pi per patch a band aliases: the phase wraps, and what the model can tell apart is the wrapped
step in [0, pi], so neighbours look closer than they are and far patches can look like neighbours.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from einops import rearrange, repeat
from PIL import Image

from .analysis import Analysis, analyze, analyze_input
from .budget import BudgetError, default_budget
from .capture import patch_distances
from .checkpoint import Bundle
from .intervene import intervene

SCHEDULES = ("rvt", "rope", "mixed", "model")
# Which resolution switches mean something for which schedule: RvT's positions are already
# normalised to the grid (it interpolates), so only integer-position schedules take the others.
SCALINGS = {"rvt": ("native",), "model": ("native",), "rope": ("native", "pi", "ntk", "yarn"),
            "mixed": ("native", "pi", "ntk", "yarn")}
SCALING_NAMES = {"native": "as defined", "pi": "position interpolation", "ntk": "NTK-aware", "yarn": "YaRN"}
MAX_GRID = 64  # 64x64 patches (e.g. 1024 px at patch 16) keeps every table and kernel under ~10 MB
MAX_DIM_HEAD = 256
DEFAULT_VALUE = {"rvt": 28.0, "rope": 100.0, "mixed": 10.0}  # max_freq 28 (the bundled 28/4 model); RoPE-ViT's thetas


@dataclass(frozen=True)
class Schedule:
    name: str  # for titles, e.g. "RvT, max_freq 28"
    kind: str  # one of SCHEDULES
    scales: torch.Tensor  # (pairs, 2) float32: frequency along (row, column) per rotated pair, times `unit`
    unit: float  # pi for RvT (its scales count half-turns per unit position), 1 for RoPE
    normalised: bool  # positions linspace(-1, 1, n) (RvT) or integer patch indices 0..n-1 (RoPE)
    axial: bool  # pairs [0, bands) rotate with the row only, [bands, 2 * bands) with the column only
    dim_head: int

    @property
    def pairs(self) -> int:
        return self.scales.shape[0]

    @property
    def bands(self) -> int:
        """Frequency bands per axis (axial), or rotated pairs (mixed)."""
        return self.pairs // 2 if self.axial else self.pairs

    def pair_label(self, p: int) -> str:
        if self.axial:
            return f"{'row' if p < self.bands else 'col'} {p % self.bands}"
        return f"pair {p}"


# ---------------------------------------------------------------- schedules

def _check_dim_head(dim_head: int) -> int:
    if not isinstance(dim_head, int | float) or int(dim_head) != dim_head or not 4 <= dim_head <= MAX_DIM_HEAD:
        raise ValueError(f"dim_head must be a whole number from 4 to {MAX_DIM_HEAD} (got {dim_head!r}): "
                         f"rows and columns each get dim_head // 4 rotated pairs")
    return int(dim_head)


def _axial(bands: torch.Tensor) -> torch.Tensor:
    """(bands,) -> (2 * bands, 2): row bands (f, 0) then column bands (0, f)."""
    zero = torch.zeros_like(bands)
    return torch.cat((torch.stack((bands, zero), -1), torch.stack((zero, bands), -1)))


def rvt_schedule(dim_head: int, max_freq: float) -> Schedule:
    """vit-pytorch RvT's: scales linspace(1, max_freq / 2, dim_head // 4), positions in [-1, 1], unit pi."""
    dim_head = _check_dim_head(dim_head)
    if not 1.0 <= float(max_freq) <= 4096.0:
        raise ValueError(f"max_freq must be from 1 to 4096 (got {max_freq!r}); RvT sets it to the training "
                         f"image size, e.g. 28 or 224")
    scales = torch.linspace(1.0, float(max_freq) / 2, dim_head // 4)
    return Schedule(f"RvT, max_freq {float(max_freq):g}", "rvt", _axial(scales), math.pi, True, True, dim_head)


def model_schedule(model: torch.nn.Module) -> Schedule:
    """The schedule of a loaded RvT (this project's or vit-pytorch's): its stored `pos_emb.scales`."""
    config = getattr(model, "config", None)
    if config is not None and not config.use_rotary:
        raise ValueError("this model was built with use_rotary=False: it has no rotary schedule to show")
    scales = model.transformer.pos_emb.scales.detach().float().cpu()
    dim_head = config.dim_head if config is not None else 4 * scales.numel()
    return Schedule(f"this model (scales {scales[0]:g}..{scales[-1]:g})", "model", _axial(scales), math.pi,
                    True, True, dim_head)


def _check_base(base: float) -> float:
    if not 1.0 < float(base) <= 1e6:
        raise ValueError(f"base must be above 1 and at most 1e6 (got {base!r}); RoPE-ViT uses 100 (axial) "
                         f"and 10 (mixed), language models 10000")
    return float(base)


def rope_frequencies(dim_head: int, base: float) -> torch.Tensor:
    """(dim_head // 4,) RoPE-ViT's magnitudes 1 / base ** (4 i / dim_head), radians per patch."""
    return 1.0 / (base ** (torch.arange(0, dim_head, 4)[: dim_head // 4].float() / dim_head))


def rope_schedule(dim_head: int, base: float) -> Schedule:
    """Axial 2-D RoPE on integer patch positions (RoPE-ViT's RoPE-Axial, rows first here)."""
    dim_head, base = _check_dim_head(dim_head), _check_base(base)
    return Schedule(f"RoPE axial, base {base:g}", "rope", _axial(rope_frequencies(dim_head, base)), 1.0,
                    False, True, dim_head)


def mixed_schedule(dim_head: int, base: float = 10.0, seed: int = 0,
                   freqs: torch.Tensor | None = None) -> Schedule:
    """RoPE-Mixed: pair p rotates along a direction in the (row, column) plane.

    Without `freqs`, RoPE-ViT's initialisation for one head: a random angle t (seeded); the first
    dim_head // 4 pairs rotate along t, the rest along t + pi/2, with RoPE's magnitudes. `freqs`
    (2, pairs) are trained (x, y) = (column, row) frequencies, e.g. from `rope_mixed_frequencies`.
    """
    dim_head, base = _check_dim_head(dim_head), _check_base(base)
    if freqs is None:
        angle = torch.rand(1, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64) * 2 * math.pi
        mag = rope_frequencies(dim_head, base).double()
        fx = torch.cat((mag * angle.cos(), mag * (angle + math.pi / 2).cos()))
        fy = torch.cat((mag * angle.sin(), mag * (angle + math.pi / 2).sin()))
        freqs, name = torch.stack((fx, fy)).float(), f"RoPE-Mixed, base {base:g}, seed {seed}"
    else:
        if freqs.ndim != 2 or freqs.shape[0] != 2 or freqs.shape[1] != dim_head // 2:
            raise ValueError(f"mixed frequencies must be (2, dim_head // 2) = (2, {dim_head // 2}) as (x, y) "
                             f"rows, got {tuple(freqs.shape)}")
        name = "RoPE-Mixed, from checkpoint"
    scales = torch.stack((freqs[1], freqs[0]), -1).float()  # (pairs, 2) as (row, column)
    return Schedule(name, "mixed", scales, 1.0, False, False, dim_head)


def rope_mixed_frequencies(state: dict[str, torch.Tensor], layer: int, head: int, heads: int) -> torch.Tensor:
    """(2, dim_head // 2) trained (x, y) frequencies of one head from a RoPE-ViT mixed checkpoint,
    whose `freqs` parameter is (2, depth, heads * dim_head // 2)."""
    keys = [k for k in state if k == "freqs" or k.endswith(".freqs")]
    if not keys:
        raise ValueError("no `freqs` tensor in this state_dict: only RoPE-Mixed checkpoints (RoPE-ViT) have "
                         "learned rotary directions")
    freqs = state[keys[0]]
    if freqs.ndim != 3 or freqs.shape[0] != 2 or freqs.shape[2] % heads:
        raise ValueError(f"`{keys[0]}` is {tuple(freqs.shape)}: expected (2, depth, heads * dim_head // 2) "
                         f"with heads={heads}")
    if not (0 <= layer < freqs.shape[1] and 0 <= head < heads):
        raise ValueError(f"layer {layer} / head {head} out of range: {freqs.shape[1]} layers, {heads} heads")
    return rearrange(freqs[:, layer], "two (h p) -> two h p", h=heads)[:, head].float()


def build_schedule(kind: str, dim_head: int, value: float | None = None, *, seed: int = 0,
                   model: torch.nn.Module | None = None) -> Schedule:
    """One entry point for the lab: `value` is max_freq (rvt) or base (rope, mixed)."""
    if kind not in SCHEDULES:
        raise ValueError(f"unknown schedule {kind!r}: choose one of {', '.join(SCHEDULES)}")
    if kind == "model":
        if model is None:
            raise ValueError("the 'model' schedule needs a loaded model")
        return model_schedule(model)
    value = DEFAULT_VALUE[kind] if value is None else value
    if kind == "rvt":
        return rvt_schedule(dim_head, value)
    return rope_schedule(dim_head, value) if kind == "rope" else mixed_schedule(dim_head, value, seed)


# ---------------------------------------------------------------- positions, tables, steps

def check_grid(grid: tuple[int, int], what: str = "grid", most: int = MAX_GRID) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in grid)
        ok = (h, w) == tuple(grid) and 1 <= h <= most and 1 <= w <= most
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{what} must be (rows, columns), each a whole number from 1 to {most} (got {grid!r})")
    return h, w


def positions(schedule: Schedule, n: int) -> torch.Tensor:
    """(n,) float32 positions along an axis of n patches."""
    return torch.linspace(-1.0, 1.0, n) if schedule.normalised else torch.arange(n, dtype=torch.float32)


def position_step(schedule: Schedule, n: int) -> float:
    """Position units between neighbouring patches along an axis of n patches."""
    if not schedule.normalised:
        return 1.0
    return 2.0 / (n - 1) if n > 1 else 0.0


def angles(schedule: Schedule, grid: tuple[int, int]) -> torch.Tensor:
    """(h, w, pairs) rotation angle of every pair at every patch, in radians (float32, RvT's op order)."""
    h, w = grid
    rows = positions(schedule, h)[:, None, None] * schedule.scales[:, 0]  # (h, 1, pairs)
    cols = positions(schedule, w)[None, :, None] * schedule.scales[:, 1]  # (1, w, pairs)
    return (rows + cols) * schedule.unit


def tables(schedule: Schedule, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(sin, cos), each (h*w, 2 * pairs), laid out as the model's: both dims of a pair share an angle."""
    phase = repeat(angles(schedule, grid), "h w p -> (h w) (p two)", two=2)
    return phase.sin(), phase.cos()


def wrap(step: torch.Tensor) -> torch.Tensor:
    """Apparent step after wrapping to (-pi, pi], as a magnitude in [0, pi]."""
    step = step.double()
    return torch.remainder(step + math.pi, 2 * math.pi).sub(math.pi).abs()


def steps(schedule: Schedule, grid: tuple[int, int]) -> torch.Tensor:
    """(pairs, 2) float64 radians a pair turns between neighbouring patches along rows and columns."""
    step = torch.tensor([position_step(schedule, n) for n in grid], dtype=torch.float64)
    return schedule.scales.double().abs() * schedule.unit * step


def spans(schedule: Schedule, grid: tuple[int, int]) -> torch.Tensor:
    """(pairs, 2) radians a pair turns from the first to the last patch along rows and columns."""
    return steps(schedule, grid) * (torch.tensor(grid, dtype=torch.float64) - 1)


# ---------------------------------------------------------------- resolution

@dataclass(frozen=True)
class YarnRamp:
    alpha: float = 1.0  # a band turning fewer times than this over the training grid is interpolated fully (YaRN)
    beta: float = 32.0  # ... more than this is kept as is; in between a linear ramp (YaRN's LLaMA values)


def scale_schedule(schedule: Schedule, train_grid: tuple[int, int], grid: tuple[int, int],
                   mode: str = "native", ramp: YarnRamp = YarnRamp()) -> Schedule:
    """The schedule as used at `grid` when trained at `train_grid`.

    native: as defined (RvT interpolates by construction, RoPE extrapolates); pi: positions squeezed
    by s = (n - 1) / (n_train - 1) per axis (frequencies / s), so the last patch lands where the training
    grid's did; ntk: NTK-aware base scaling, base * s ** (D / (D - 2))
    with D = dim_head / 2 rotated dims per axis (the fastest band kept, the slowest / s), written for any
    magnitude set as s ** -(log(f_max / f) / log(f_max / f_min)); yarn: per band, by turns r over the
    training grid, frequencies / s below ramp.alpha, kept above ramp.beta, linear in between.
    Only a larger grid (s > 1) is rescaled; on a smaller one every angle was seen in training.
    """
    allowed = SCALINGS[schedule.kind]
    if mode not in allowed:
        raise ValueError(f"scaling {mode!r} does not apply to the {schedule.kind} schedule: choose one of "
                         f"{', '.join(allowed)}" + (" (RvT's positions are normalised to [-1, 1], so a new grid "
                                                     "is already interpolated)" if schedule.normalised else ""))
    if mode == "native":
        return schedule
    s = torch.tensor([(n - 1) / (n0 - 1) if n0 > 1 else n / n0 for n, n0 in zip(grid, train_grid)],
                     dtype=torch.float64).clamp_min(1.0)  # (2,): the grid spans the training grid's positions
    scales = schedule.scales.double()
    magnitude = scales.norm(dim=-1, keepdim=True)  # (pairs, 1)
    if mode == "pi":
        factor = 1.0 / s.expand_as(scales)
    elif mode == "ntk":
        f_max, f_min = magnitude.max(), magnitude.min()
        share = (f_max / magnitude).log() / (f_max / f_min).log() if f_max > f_min else torch.zeros_like(magnitude)
        factor = s ** -share.clamp(0, 1)
    else:  # yarn
        turns = magnitude * torch.tensor(train_grid, dtype=torch.float64) / (2 * math.pi)  # (pairs, 2)
        gamma = ((turns - ramp.alpha) / (ramp.beta - ramp.alpha)).clamp(0, 1)
        factor = (1 - gamma) / s + gamma
    name = f"{schedule.name}, {SCALING_NAMES[mode]} x{float(s.max()):.2f}"
    return replace(schedule, name=name, scales=(scales * factor).float())


# ---------------------------------------------------------------- kernels

def offsets(schedule: Schedule, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column offsets (2h-1,), (2w-1,) in patches, and the same in position units."""
    h, w = grid
    dr, dc = torch.arange(-(h - 1), h, dtype=torch.float64), torch.arange(-(w - 1), w, dtype=torch.float64)
    return dr * position_step(schedule, h), dc * position_step(schedule, w)


def offset_angles(schedule: Schedule, grid: tuple[int, int]) -> torch.Tensor:
    """(2h-1, 2w-1, pairs) angle difference key minus query for every (row, column) offset."""
    pr, pc = offsets(schedule, grid)
    scales = schedule.scales.double()
    return (pr[:, None, None] * scales[:, 0] + pc[None, :, None] * scales[:, 1]) * schedule.unit


def ideal_kernel(schedule: Schedule, grid: tuple[int, int]) -> torch.Tensor:
    """(2h-1, 2w-1) q_rot . k_rot over offsets for q = k, a unit vector spread evenly over the pairs:
    the mean over pairs of cos(angle difference). Centre (offset 0) is 1."""
    return offset_angles(schedule, grid).cos().mean(-1)


def _pairs(t: torch.Tensor, pairs: int) -> torch.Tensor:
    """(..., d) real -> (..., pairs) complex: the rotated pairs as complex numbers."""
    return torch.view_as_complex(t[..., : 2 * pairs].double().unflatten(-1, (-1, 2)).contiguous())


def head_kernel(q: torch.Tensor, k: torch.Tensor, schedule: Schedule, grid: tuple[int, int],
                query: int | None = None) -> torch.Tensor:
    """(2h-1, 2w-1) what rotation alone does to one head's typical q and k.

    q, k: (1 + N, d) one head's unrotated queries and keys, CLS first. With qbar the mean patch
    query (or patch `query`'s) and kbar the mean patch key, kernel(offset) = sum_p Re(qbar_p conj(kbar_p)
    e^{-i angle_p(offset)}) / sum_p |qbar_p| |kbar_p|: q_rot . k_rot if every patch had qbar and kbar,
    divided by its largest possible value. 1 at zero offset only if each pair's q and k point the same way.
    """
    qp = _pairs(q[1:], schedule.pairs)  # (N, pairs)
    kp = _pairs(k[1:], schedule.pairs)
    qbar = qp.mean(0) if query is None else qp[query]
    c = qbar * kp.mean(0).conj()  # (pairs,)
    phase = torch.polar(torch.ones_like(offset_angles(schedule, grid)), -offset_angles(schedule, grid))
    return (phase * c).real.sum(-1) / (qbar.abs() * kp.mean(0).abs()).sum().clamp_min(1e-12)


def score_kernel(q_rot: torch.Tensor, k_rot: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(2h-1, 2w-1) mean logit q_rot . k_rot / sqrt(d) over all patch pairs at each (row, column) offset
    of the key from the query: the head's real positional profile, content included."""
    h, w = grid
    scores = (q_rot[1:].double() @ k_rot[1:].double().T) * q_rot.shape[-1] ** -0.5  # (N, N)
    r, c = torch.div(torch.arange(h * w), w, rounding_mode="floor"), torch.arange(h * w) % w
    index = ((r[None, :] - r[:, None] + h - 1) * (2 * w - 1) + (c[None, :] - c[:, None] + w - 1)).flatten()
    total = torch.zeros((2 * h - 1) * (2 * w - 1), dtype=torch.float64).index_add_(0, index, scores.flatten())
    count = torch.bincount(index, minlength=total.numel()).double()
    return (total / count).reshape(2 * h - 1, 2 * w - 1)


def head_kernels(analysis: Analysis, schedule: Schedule, layer: int, head: int, query: int | None = None) -> dict:
    """`head_kernel` and `score_kernel` for one head of an Analysis captured with q/k, titled, as
    viz.rotary_lab.kernel_figure takes them. query: a patch index (row-major) or None for the mean."""
    trace = analysis.trace
    if layer not in trace.layers or not 0 <= head < trace.qk("q").shape[2]:
        raise ValueError(f"layer {layer} / head {head} not in this analysis: layers {trace.layers}, "
                         f"heads 0..{trace.qk('q').shape[2] - 1}")
    at = trace.layers.index(layer)
    q, k, q_rot, k_rot = (trace.qk(name)[at, 0, head] for name in ("q", "k", "q_rot", "k_rot"))
    where = "mean patch query" if query is None else f"patch {divmod(query, analysis.grid[1])}"
    return {"title": f"layer {layer}, head {head} ({where})",
            "mean_qk": head_kernel(q, k, schedule, analysis.grid, query),
            "scores": score_kernel(q_rot, k_rot, analysis.grid)}


def kernel_cuts(kernel: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """1-D cuts of an offset kernel (2h-1, 2w-1) through zero: along the row axis (column offset 0),
    the column axis and the diagonal; each (offsets in patches, values)."""
    h, w = (kernel.shape[0] + 1) // 2, (kernel.shape[1] + 1) // 2
    d = min(h, w)
    diagonal = torch.arange(-(d - 1), d)
    return {"row": (torch.arange(-(h - 1), h), kernel[:, w - 1]),
            "column": (torch.arange(-(w - 1), w), kernel[h - 1, :]),
            "diagonal": (diagonal, kernel[diagonal + h - 1, diagonal + w - 1])}


# ---------------------------------------------------------------- the lab view (what the tab and the API draw from)

@dataclass
class LabView:
    schedule: Schedule  # as used at `grid` (after scaling)
    trained: Schedule  # as defined, used at `train_grid`
    grid: tuple[int, int]
    train_grid: tuple[int, int]
    scaling: str
    angles: torch.Tensor  # (h, w, pairs)
    steps: torch.Tensor  # (pairs, 2) unwrapped rad per patch at grid
    train_steps: torch.Tensor  # (pairs, 2) at train_grid
    kernel: torch.Tensor  # (2h-1, 2w-1) idealised
    bands: list[dict] = field(default_factory=list)

    @property
    def wrapped(self) -> torch.Tensor:
        return wrap(self.steps)

    def aliasing(self) -> dict[str, int]:
        """How many entries of `bands` alias, per axis."""
        return {axis: sum(b["aliases"] for b in self.bands if b["axis"] == axis) for axis in ("row", "col")}

    def to_json(self) -> dict:
        return {"schedule": self.schedule.name, "kind": self.schedule.kind, "grid": list(self.grid),
                "train_grid": list(self.train_grid), "dim_head": self.schedule.dim_head, "scaling": self.scaling,
                "bands": self.bands, "aliasing": self.aliasing(),
                "note": ALIASING_NOTE}


ALIASING_NOTE = ("A band whose step per patch exceeds π aliases: the phase wraps, so the model sees the wrapped "
                 "step (at most π); neighbours look closer than they are, and far patches can look like neighbours.")


def _band_table(view: LabView) -> list[dict]:
    schedule, rows = view.schedule, []
    unseen = (spans(schedule, view.grid) > spans(view.trained, view.train_grid) * (1 + 1e-6)) \
        & (spans(view.trained, view.train_grid) < 2 * math.pi)  # never a full turn in training, new angles here
    scales, unseen = schedule.scales.tolist(), unseen.tolist()
    step, wrapped, train = view.steps.tolist(), wrap(view.steps).tolist(), view.train_steps.tolist()
    for p in range(schedule.pairs):
        for a, axis in enumerate(("row", "col")):
            if schedule.axial and scales[p][a] == 0:
                continue  # an axial pair does not turn along the other axis
            rows.append({"axis": axis, "band": p % schedule.bands if schedule.axial else p, "pair": p,
                         "frequency": scales[p][a] * schedule.unit, "step": step[p][a],
                         "wrapped_step": wrapped[p][a], "aliases": step[p][a] > math.pi,
                         "train_step": train[p][a], "unseen_angles": unseen[p][a]})
    return rows


def lab_view(schedule: Schedule, grid: tuple[int, int], train_grid: tuple[int, int] | None = None,
             scaling: str = "native", *, max_grid: int = MAX_GRID) -> LabView:
    """Everything the lab draws for one setting: validated, then pure tensor arithmetic (no model).
    max_grid: the largest side accepted; a caller whose grid the server's memory budget already bounded
    (an analysis) passes that grid's side. Tables and kernels are O(h * w * pairs): megabytes at 100x100."""
    grid = check_grid(grid, most=max_grid)
    train_grid = grid if train_grid is None else check_grid(train_grid, "training grid", max_grid)
    used = scale_schedule(schedule, train_grid, grid, scaling)
    view = LabView(schedule=used, trained=schedule, grid=grid, train_grid=train_grid, scaling=scaling,
                   angles=angles(used, grid), steps=steps(used, grid), train_steps=steps(schedule, train_grid),
                   kernel=ideal_kernel(used, grid))
    view.bands = _band_table(view)
    return view


def lab_bands(schedule: str, rows: int, cols: int, dim_head: int, max_freq_or_base: float | None = None, *,
              train_rows: int | None = None, train_cols: int | None = None, scaling: str = "native",
              seed: int = 0) -> dict:
    """The `rotary_lab` endpoint: JSON with "bands", one entry per band and axis ("axis", "frequency"
    in rad per position unit, "step" in rad per patch, "wrapped_step" in [0, pi], "aliases")."""
    if schedule not in ("rvt", "rope", "mixed"):
        raise ValueError(f"schedule must be 'rvt' or 'rope' (or 'mixed'), got {schedule!r}")
    train = None if train_rows is None and train_cols is None else (train_rows or rows, train_cols or cols)
    view = lab_view(build_schedule(schedule, dim_head, max_freq_or_base, seed=seed), (rows, cols), train, scaling)
    return view.to_json()


# ---------------------------------------------------------------- how a model uses the bands

@dataclass(frozen=True)
class RoleRule:
    """Barbero et al. 2024 ("Round and Round We Go"): heads that put their q/k norm on fast-rotating pairs
    build positional patterns, heads on slow pairs carry content. Fast and slow are ranked by the
    *wrapped* step at the analysed grid (an aliased band can turn slowly); the faster half of the pairs
    is "high frequency"."""

    threshold: float = 0.6  # share of usage in one half needed to call a head; 0.5 would label noise


def band_energy(q: torch.Tensor, k: torch.Tensor, pairs: int) -> dict[str, torch.Tensor]:
    """Per rotated pair, the mean squared norm of q and of k over patch tokens.

    q, k: (L, B, H, 1 + N, d) unrotated (rotation keeps each pair's norm), CLS first and left out.
    Returns "q", "k" (L, H, pairs); "q_rotated", "k_rotated" (L, H): energy in the 2 * pairs rotated dims,
    the sum of the bands; "usage" (L, H, pairs): sqrt(q * k) per pair, the bound on its share of a
    score, normalised to sum to 1 per head.
    """
    def energy(t):
        return t[..., 1:, : 2 * pairs].double().unflatten(-1, (pairs, 2)).pow(2).sum(-1).mean(dim=(1, 3))

    eq, ek = energy(q), energy(k)  # (L, H, pairs)
    usage = (eq * ek).sqrt()
    return {"q": eq, "k": ek, "usage": usage / usage.sum(-1, keepdim=True).clamp_min(1e-30),
            "q_rotated": q[..., 1:, : 2 * pairs].double().pow(2).sum(-1).mean(dim=(1, 3)),
            "k_rotated": k[..., 1:, : 2 * pairs].double().pow(2).sum(-1).mean(dim=(1, 3))}


def fast_pairs(schedule: Schedule, grid: tuple[int, int]) -> torch.Tensor:
    """(pairs,) bool: the faster half of the pairs by wrapped step along their own axis (ties by index)."""
    wrapped = wrap(steps(schedule, grid)).max(-1).values  # an axial pair moves along one axis only
    order = sorted(range(schedule.pairs), key=lambda p: (float(wrapped[p]), p))
    fast = torch.zeros(schedule.pairs, dtype=torch.bool)
    fast[order[schedule.pairs - schedule.pairs // 2:]] = True
    return fast


def head_roles(usage: torch.Tensor, fast: torch.Tensor, rule: RoleRule = RoleRule()) -> tuple[torch.Tensor, list]:
    """usage (L, H, pairs) -> (share of usage on fast pairs (L, H), labels [[...]] of "positional",
    "semantic" or "mixed")."""
    share = usage[..., fast].sum(-1)
    labels = [["positional" if s >= rule.threshold else "semantic" if s <= 1 - rule.threshold else "mixed"
               for s in row.tolist()] for row in share]
    return share, labels


def band_usage(analysis: Analysis, schedule: Schedule, rule: RoleRule = RoleRule()) -> dict:
    """Band energies, usage shares and head roles for an Analysis captured with q/k (rvt.analysis.analyze)."""
    q, k = analysis.trace.qk("q"), analysis.trace.qk("k")
    energy = band_energy(q, k, schedule.pairs)
    fast = fast_pairs(schedule, analysis.grid)
    share, labels = head_roles(energy["usage"], fast, rule)
    return {**energy, "fast": fast, "fast_share": share, "roles": labels, "layers": list(analysis.trace.layers),
            "pair_labels": [schedule.pair_label(p) for p in range(schedule.pairs)],
            "wrapped": wrap(steps(schedule, analysis.grid)).max(-1).values}


def band_ablation(bundle: Bundle, analysis: Analysis, bands_off: dict[int, list]) -> dict:
    """What-if: the same input with chosen rotary bands switched off in chosen layers (rvt.intervene).

    Returns "analysis" (the new Analysis), "before"/"after" top-5 predictions, "attention_change" (L, H):
    total variation between old and new attention rows, averaged over queries (0 same, 1 disjoint), and
    "bands_off" as given.
    """
    with intervene(bundle.model, bands_off=bands_off):
        after = analyze_input(bundle, analysis.input, analysis.image, heads_off=analysis.heads_off,
                              rotary_off=analysis.rotary_off)
    change = 0.5 * (after.trace.attention - analysis.trace.attention).abs().sum(-1).mean(dim=(1, 3))
    return {"analysis": after, "before": analysis.top(5), "after": after.top(5), "attention_change": change,
            "bands_off": {int(k): list(v) for k, v in bands_off.items() if v}}


# ---------------------------------------------------------------- resolution sweep with a model

SWEEP_SCALES = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0)


def _sweep_grids(train_grid: tuple[int, int], scales: Sequence) -> list[tuple[object, tuple[int, int]]]:
    grids = []
    for s in scales:
        sh, sw = (s, s) if isinstance(s, int | float) else s
        if not (0 < sh <= 16 and 0 < sw <= 16):
            raise ValueError(f"sweep scale {s!r} out of range: give factors of the training grid in (0, 16]")
        grid = (max(1, round(train_grid[0] * sh)), max(1, round(train_grid[1] * sw)))
        if all(g != grid for _, g in grids):
            grids.append((s, grid))
    return grids


def resolution_sweep(bundle: Bundle, image: Image.Image, scales: Sequence = SWEEP_SCALES,
                     progress: Callable[[float], None] | None = None, check: Callable[[], None] | None = None,
                     budget: int | None = None) -> dict:
    """Run the model on `image` resized to grids of `scales` x the training grid (a factor, or a
    (rows, cols) pair of factors), one pass each.

    Per size: prediction, attention entropy per layer (nats, and as a share of its maximum log(1 + N)),
    mean attention distance per layer (px at that size, in patches, and relative to uniform attention),
    each the mean over heads of the statistics `analyze` records during its pass. Sizes whose analysis
    would exceed `budget` bytes (rvt.budget; default `default_budget()`) are skipped with the reason.
    Sizes are images upsampled or downsampled, so part of any change is the content's scale, not rotary.
    `progress(fraction)` after each size; `check()` before each (raise in it to stop).
    """
    budget = default_budget() if budget is None else budget
    train_grid, patch = bundle.train_grid, bundle.config.patch_size
    grids = _sweep_grids(train_grid, scales)
    rows, skipped = [], []
    for i, (scale, grid) in enumerate(grids):
        if check is not None:
            check()
        size = (grid[0] * patch, grid[1] * patch)
        try:
            a = analyze(bundle, image, size, budget=budget)
        except BudgetError as e:
            skipped.append({"scale": scale, "grid": list(grid), "reason": str(e)})
        else:
            stats = a.trace.head_stats  # {statistic: (L, H)}, recorded during the pass
            entropy, distance = stats["entropy_nats"].mean(-1), stats["mean_distance_px"].mean(-1)  # (L,)
            uniform = float(patch_distances(grid, patch).mean())  # a head attending evenly to every patch
            label, prob = a.top(1)[0]
            rows.append({"scale": scale, "grid": list(grid), "size": list(size), "label": label, "prob": prob,
                         "probs": a.probs.tolist(), "entropy": entropy.tolist(),
                         "entropy_share": (entropy / math.log(grid[0] * grid[1] + 1)).tolist(),
                         "distance_px": distance.tolist(), "distance_patches": (distance / patch).tolist(),
                         "distance_rel": (distance / uniform).tolist() if uniform else [0.0] * len(distance)})
        if progress is not None:
            progress((i + 1) / len(grids))
    return {"train_grid": list(train_grid), "labels": bundle.labels, "rows": rows, "skipped": skipped}

"""The explorer's service: models, per-session analyses, model passes and jobs. No Gradio here.

Everything the web page does goes through one `LensService`, so it is unit-tested in milliseconds
with no server, and the same calls serve the app, the tests and the benchmarks:

    service = LensService(load_checkpoint(path, "cpu"))
    sid = service.open_session()
    analysis = service.analyze(sid, "shirt.png")
    maps = service.attribution(sid, "Integrated Gradients", steps=32)

Model passes never touch a module another request is using: every pass borrows a private replica
of the session's model from a `ModelPool` (the bundled model is 2.3 MB; a replica costs a deepcopy
once), so captures, interventions and attributions of different users run side by side without a
global lock. What a visitor sends is bounded here, never by what the visitor supplies: image and
analysis sizes by `ServerLimits`, checkpoints by `ModelLimits`, sessions by a time to live and a
total memory cap (oldest evicted first), jobs by a time limit and a cancel flag checked between
steps.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import queue
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rvt import Bundle, ModelLimits, RvT, RvTConfig, load_checkpoint
from rvt.analysis import Analysis, analyze, analyze_input, attention_gradients
from rvt.assets import SCENE_CHECKPOINTS
from rvt.budget import (
    BudgetError,
    attribution_bytes,
    check_budget,
    estimate,
    estimate_bytes,
    gradient_batch,
    largest_size,
)
from rvt.faithfulness import ATTENTION_METHODS, FILLS, RANDOM, FaithfulnessConfig, Scorecard, scorecard
from rvt.groundtruth import TEST_SEED, head_object_mass, key_mask, relevance_maps, score_methods, score_scene, silencing
from rvt.preprocess import Preprocess, read_image
from rvt.scenes import Scene, make_scenes
from viz.attributions import BASELINES, METHODS, attribute

log = logging.getLogger("rvt-lens")


NO_IMAGE = "Upload an image (or pick an example) first."
GRADIENT_CLASSES = 2  # classes whose attention gradients a session keeps (each as large as the attention)


class UserError(ValueError):
    """A request the service refuses; the message says what was wrong and what is accepted."""


class SessionExpired(UserError):
    pass


class NothingChosen(UserError):
    """A request that chose nothing to do (no head, band or layer to switch off): the page warns and
    leaves its results as they are (`lens.errors.guarded`)."""


class Cancelled(UserError):
    pass


@dataclass(frozen=True)
class ServerLimits:
    """What one visitor may use. Set by whoever runs the server (flags), never by an upload."""

    max_side: int = 448  # px per side of an inference resolution, whatever the model: 16x the bundled 28 px
    analysis_bytes: int = 10**9  # peak memory of one analysis (rvt.budget's estimate): 224 px on the bundled model
    total_bytes: int = 10**9  # cached analyses of all sessions plus the running passes' estimates: the least
    # recently used analyses go first, and a pass that still does not fit waits for others to end
    session_ttl: float = 600.0  # seconds of idleness after which a session's analysis is freed
    job_timeout: float = 120.0  # seconds a heavy job (attribution, export) may run
    max_steps: int = 128  # attribution steps / samples


@dataclass
class SessionData:
    """One visitor's state. The model is shared read-only unless the visitor loaded their own."""

    pool: ModelPool
    analysis: Analysis | None = None
    path: str | None = None  # the upload the analysis came from, for re-runs at another size
    size: tuple[int, int] | None = None  # the inference size it ran at
    analyzing: threading.Lock = field(default_factory=threading.Lock)  # one analysis at a time per session
    gradients: dict[int, torch.Tensor] = field(default_factory=dict)  # class -> attention gradients
    query: tuple[int, int] | None = None  # patch picked by clicking; None = CLS
    job: Job | None = None  # the running heavy job, if any
    export_dir: Path | None = None
    last_used: float = field(default_factory=time.monotonic)

    @property
    def bundle(self) -> Bundle:
        return self.pool.bundle

    @property
    def nbytes(self) -> int:
        own_model = 0 if self.pool.shared else self.pool.nbytes
        return tensor_bytes(self.analysis) + tensor_bytes(self.gradients) + own_model


def tensor_bytes(obj) -> int:
    """Bytes held by the tensors and arrays inside dataclasses, dicts and sequences (views counted once each)."""
    if isinstance(obj, torch.Tensor):
        return obj.untyped_storage().nbytes()
    if hasattr(obj, "nbytes") and hasattr(obj, "dtype"):  # numpy arrays
        return int(obj.nbytes)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_bytes(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(tensor_bytes(v) for v in obj)
    return 0


class Job:
    """A heavy computation's cancel flag and deadline; `check()` raises once either is hit."""

    def __init__(self, timeout: float):
        self.cancelled = threading.Event()
        self.deadline = time.monotonic() + timeout
        self.timeout = timeout

    def check(self) -> None:
        if self.cancelled.is_set():
            raise Cancelled("Cancelled.")
        if time.monotonic() > self.deadline:
            raise Cancelled(f"Stopped after the server's time limit of {self.timeout:.0f} s for one job: "
                            f"use fewer steps, no SmoothGrad, or a smaller inference resolution.")


LIVE_SCENE_METHODS = (*ATTENTION_METHODS, RANDOM)  # one pass and one backward: cheap enough for every edit


@dataclass
class SceneAnalysis:
    scene: Scene
    analysis: Analysis
    maps: dict[str, np.ndarray]  # method -> 2-D relevance for the predicted class (patch grid or pixels)
    scores: dict[str, dict[str, float]]  # method (and "uniform map") -> {"mass": ..., "rank": ...}


@dataclass
class SceneHeads:
    mass: dict[str, np.ndarray]  # "cls" / "patches" -> (L, H) attention mass on the key objects; "uniform"
    silencing: dict[str, dict[str, float]]  # query -> accuracy with all heads / top k / bottom k / random k off
    count: int
    k: int


class ModelPool:
    """Private replicas of one read-only model: each pass borrows one, so hooks never leak across users."""

    def __init__(self, bundle: Bundle, shared: bool):
        self.bundle, self.shared = bundle, shared
        self._free: queue.SimpleQueue[torch.nn.Module] = queue.SimpleQueue()
        self.nbytes = sum(p.numel() * p.element_size() for p in bundle.model.state_dict().values())

    @contextlib.contextmanager
    def borrow(self) -> Iterator[Bundle]:
        try:
            model = self._free.get_nowait()
        except queue.Empty:
            model = copy.deepcopy(self.bundle.model)  # at most one replica per concurrent pass
        try:
            yield dataclasses.replace(self.bundle, model=model)
        finally:
            self._free.put(model)


def _init_like_vit(model: RvT, seed: int) -> RvT:
    """Seeded ViT initialisation from a private generator (no process-wide torch.manual_seed)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1 or name == "cls_token":
                torch.nn.init.trunc_normal_(p, std=0.02, generator=generator)
            elif name.endswith("weight"):  # LayerNorm scales
                p.fill_(1.0)
            else:
                p.zero_()
    return model


RANDOM_RANGES = {  # (min, max, step) of each size an untrained model may have: small enough to build in a second
    "dim": (16, 256, 16), "depth": (1, 12, 1), "heads": (1, 8, 1), "dim_head": (4, 64, 4),
    "image_size": (8, 224, 4), "patch_size": (2, 32, 1),
}


@dataclass(frozen=True)
class RandomSpec:
    """An untrained RvT to look at the architecture: attention and rotary without training."""

    image_size: int = 28
    patch_size: int = 4
    dim: int = 64
    depth: int = 4
    heads: int = 4
    dim_head: int = 16
    seed: int = 0

    def config(self, num_classes: int) -> RvTConfig:
        for name, (lo, hi, step) in RANDOM_RANGES.items():
            value = getattr(self, name)
            if not lo <= value <= hi or (value - lo) % step:
                raise UserError(f"random model {name}={value} is not available: choose {lo}..{hi} in steps of {step}")
        if self.dim_head % 4:
            raise UserError(f"dim_head must be a multiple of 4 (rows and columns get dim_head / 4 bands "
                            f"each), not {self.dim_head}")
        if self.image_size % self.patch_size:
            raise UserError(f"image size {self.image_size} is not a multiple of the patch size {self.patch_size}")
        return RvTConfig(image_size=self.image_size, patch_size=self.patch_size, dim=self.dim, depth=self.depth,
                         heads=self.heads, dim_head=self.dim_head, mlp_dim=2 * self.dim, channels=1,
                         num_classes=num_classes)


BUSY = ("The server is busy with other visitors' large analyses and could not make room for yours within "
        "{:.0f} s: try again in a moment, or at a smaller inference resolution.")


class LensService:
    def __init__(self, bundle: Bundle, limits: ServerLimits | None = None, *, bf16: bool = False,
                 model_limits: ModelLimits | None = None):
        self.limits = limits or ServerLimits()
        self.model_limits = model_limits or ModelLimits()
        self.bf16 = bf16
        self.bundled = ModelPool(bundle, shared=True)
        self._sessions: dict[str, SessionData] = {}
        self._lock = threading.Lock()  # guards the session table and the memory account; passes never hold it
        self._room = threading.Condition(self._lock)  # notified when a pass ends and its memory is given back
        self._in_flight = 0  # bytes reserved by the running passes (rvt.budget's estimates)
        self._exports = Path(tempfile.mkdtemp(prefix="rvt-lens-exports-"))
        self.passes = 0  # model passes run so far (borrows of a replica), for tests and benchmarks
        self._shared: dict[str, ModelPool] = {}  # further read-only models every session may use, by path
        self._scene_heads: dict[tuple, SceneHeads] = {}  # (model, scenes, k) -> result: the same for everyone

    def shared_model(self, path: str | Path) -> ModelPool:
        """A read-only model the server offers to everyone (e.g. the scene models), loaded once."""
        key = str(Path(path).resolve())
        with self._lock:
            pool = self._shared.get(key)
        if pool is None:
            pool = ModelPool(load_checkpoint(path, self.bundled.bundle.device, limits=self.model_limits), shared=True)
            with self._lock:
                pool = self._shared.setdefault(key, pool)
        return pool

    @contextlib.contextmanager
    def borrow(self, pool: ModelPool, need: int, keep: str | None = None) -> Iterator[Bundle]:
        """A private replica of `pool`'s model for one pass (counted in `passes`) that may use `need` bytes.

        The bytes come out of `limits.total_bytes`, shared with the cached analyses: the least recently
        used analyses (never `keep`'s, nor a session's with a running job) are freed to make room, and a
        pass that still does not fit waits until running passes end. A pass with none running always
        starts (its size passed the per-analysis budget), so the server's peak is about one budget.
        """
        deadline = time.monotonic() + self.limits.job_timeout
        with self._room:
            while True:
                cached = self._drop_locked(room=self._in_flight + need, keep=keep)
                if not self._in_flight or cached + self._in_flight + need <= self.limits.total_bytes:
                    break
                if not self._room.wait(max(0.0, deadline - time.monotonic())):
                    raise UserError(BUSY.format(self.limits.job_timeout))
            self._in_flight += need
            self.passes += 1
        try:
            with pool.borrow() as replica:
                yield replica
        finally:
            with self._room:
                self._in_flight -= need
                self._room.notify_all()

    def pass_bytes(self, bundle: Bundle, size: tuple[int, int]) -> int:
        """What one captured pass at `size` reserves: the analysis estimate, at most the per-analysis budget."""
        return min(self.limits.analysis_bytes, estimate_bytes(bundle.config, size))

    def _borrow(self, data: SessionData, sid: str, need: int | None = None):
        """A replica of the session's model for a pass over its current analysis (at `data.size`)."""
        size = data.size or data.bundle.preprocess.image_size
        return self.borrow(data.pool, self.pass_bytes(data.bundle, size) if need is None else need, keep=sid)

    # ---- sessions ---------------------------------------------------------------------------------

    def open_session(self) -> str:
        sid = uuid.uuid4().hex
        with self._lock:
            self._sessions[sid] = SessionData(pool=self.bundled)
        self.sweep()
        return sid

    def session(self, sid: str | None) -> SessionData:
        if sid is None:
            raise UserError(NO_IMAGE)
        self.sweep()
        with self._lock:
            data = self._sessions.get(sid or "")
            if data is None:
                raise SessionExpired(f"This session's analysis was freed (idle for {self.limits.session_ttl:.0f} s, "
                                     f"or to make room for other visitors, or the server restarted): upload the "
                                     f"image again.")
            data.last_used = time.monotonic()
        if data.path is not None:  # the upload stays as new as the session: caches prune files by age (ctime)
            with contextlib.suppress(OSError):
                os.utime(data.path)
        return data

    def session_or_new(self, sid: str | None) -> str:
        """`sid` if that session is live, else a new session's id (first visit, or expired)."""
        try:
            self.session(sid)
            return sid
        except UserError:
            return self.open_session()

    def close_session(self, sid: str | None) -> None:
        with self._lock:
            data = self._sessions.pop(sid or "", None)
        if data is not None:
            self._release(data)

    def _release(self, data: SessionData) -> None:
        if data.job is not None:
            data.job.cancelled.set()
        if data.export_dir is not None:
            shutil.rmtree(data.export_dir, ignore_errors=True)
        data.analysis, data.gradients = None, {}

    def sweep(self) -> int:
        """Free sessions idle past the TTL, then the least recently used until the cached analyses and
        the running passes fit the memory cap. Returns how many sessions went."""
        with self._lock:
            before = len(self._sessions)
            self._drop_locked(room=self._in_flight)
            return before - len(self._sessions)

    def _drop_locked(self, room: int, keep: str | None = None) -> int:
        """Under the lock: drop the sessions idle past the TTL, then free the least recently used analyses
        (never `keep`'s, nor one running a job or an analysis) until what sessions hold plus `room` bytes
        fits `limits.total_bytes`. A freed analysis runs again when its visitor next asks (`current`); an
        idle session holding only its own model goes whole. Returns the bytes the sessions still hold."""
        now = time.monotonic()
        expired = [sid for sid, d in self._sessions.items()
                   if now - d.last_used > self.limits.session_ttl and d.job is None and sid != keep
                   and not d.analyzing.locked()]
        dropped = [self._sessions.pop(sid) for sid in expired]
        by_age = sorted(self._sessions.items(), key=lambda item: item[1].last_used)
        total = sum(d.nbytes for _, d in by_age)
        for sid, d in by_age:
            if total + room <= self.limits.total_bytes:
                break
            if d.job is not None or sid == keep or d.analyzing.locked():  # in use: its pass counts in `room`
                continue
            held = d.nbytes
            if d.analysis is not None:
                d.analysis, d.gradients = None, {}  # the path and size stay: `current` runs it again
            elif not d.pool.shared:
                dropped.append(self._sessions.pop(sid))
            total -= held - (d.nbytes if sid in self._sessions else 0)
        for data in dropped:  # cheap: drops references (the memory goes with the last one) and an export folder
            self._release(data)
        return total

    def is_live(self, sid: str | None) -> bool:
        """Whether `sid` is a session the service still holds (not expired, closed or never opened)."""
        with self._lock:
            return (sid or "") in self._sessions

    @property
    def live_sessions(self) -> int:
        with self._lock:
            return len(self._sessions)

    def close(self) -> None:
        """Free everything and delete what the service wrote to disk (called on shutdown)."""
        with self._lock:
            sessions, self._sessions = list(self._sessions.values()), {}
        for data in sessions:
            self._release(data)
        shutil.rmtree(self._exports, ignore_errors=True)

    # ---- models -----------------------------------------------------------------------------------

    def use_bundled(self, sid: str) -> Bundle:
        return self._set_model(sid, self.bundled)

    def load_checkpoint(self, sid: str, path: str | Path, **hints) -> Bundle:
        bundle = load_checkpoint(path, self.bundled.bundle.device, limits=self.model_limits, **hints)
        return self._set_model(sid, ModelPool(bundle, shared=False))

    def random_model(self, sid: str, spec: RandomSpec) -> Bundle:
        labels = self.bundled.bundle.labels
        config = spec.config(len(labels))
        self.check_model_size(config)
        with torch.random.fork_rng(devices=[]):  # construction draws from the global RNG: restore it after
            model = _init_like_vit(RvT.from_config(config), spec.seed)
        model = model.to(self.bundled.bundle.device).eval().requires_grad_(False)
        size = (config.image_size, config.image_size)
        bundle = Bundle(model=model, labels=list(labels), config=config, preprocess=Preprocess(image_size=size),
                        device=self.bundled.bundle.device, source=f"random RvT (seed {spec.seed})",
                        notes=["untrained: predictions are meaningless; attention and rotary show the architecture"])
        return self._set_model(sid, ModelPool(bundle, shared=False))

    def check_model_size(self, config: RvTConfig) -> None:
        self.model_limits.check(config)

    def _set_model(self, sid: str, pool: ModelPool) -> Bundle:
        data = self.session(sid)
        self._release(data)
        data.pool, data.path, data.size, data.query = pool, None, None, None
        return pool.bundle

    # ---- sizes ------------------------------------------------------------------------------------

    def size_range(self, bundle: Bundle) -> tuple[int, int, int]:
        """(minimum, maximum, step) of an inference side in px: patch steps up to the server's side limit
        and the largest square the memory budget allows (a taller or wider size is checked on request)."""
        p = bundle.config.patch_size
        square = largest_size(bundle.config, self.limits.analysis_bytes)
        return p, max(p, min(self.limits.max_side // p * p, square[0] if square else p)), p

    def check_size(self, bundle: Bundle, size: tuple[int, int]) -> tuple[int, int]:
        height, width = (int(s) for s in size)
        step = lo = bundle.config.patch_size
        hi = max(step, self.limits.max_side // step * step)
        for name, side in (("height", height), ("width", width)):
            if not lo <= side <= hi or side % step:
                raise UserError(f"{name} {side} px is not available: choose a multiple of the patch size "
                                f"{step} between {lo} and {hi} px.")
        try:  # from the config alone: refused before anything is allocated
            check_budget(bundle.config, (height, width), self.limits.analysis_bytes)
        except BudgetError as e:
            raise UserError(f"{e}. Choose a smaller inference resolution.") from None
        return height, width

    # ---- model passes -----------------------------------------------------------------------------

    def analyze(self, sid: str, path: str | Path, size: tuple[int, int] | None = None) -> Analysis:
        """Decode the upload itself, preprocess as the Python API does, and run one captured pass.

        A session analyses one request at a time, and a repeat of the analysis it holds (the same
        file at the same size: browsers send an image's change event twice when it is replaced)
        returns that analysis instead of running the model again.
        """
        data = self.session(sid)
        bundle = data.bundle
        with data.analyzing:
            try:
                size = self.check_size(bundle, size or bundle.preprocess.image_size)
                if data.analysis is not None and (data.path, data.size) == (str(path), size):
                    return data.analysis
                data.analysis, data.gradients, data.query = None, {}, None  # a refusal leaves nothing stale
                image = read_image(path)
                with self.borrow(data.pool, self.pass_bytes(bundle, size), keep=sid) as replica:
                    analysis = analyze(replica, image, size, bf16=self.bf16)
            except Exception:
                data.analysis, data.path, data.size = None, None, None
                raise
            data.analysis, data.path, data.size = analysis, str(path), size
        self.sweep()
        return analysis

    def clear(self, sid: str) -> None:
        data = self.session(sid)
        data.analysis, data.gradients, data.query, data.path, data.size = None, {}, None, None, None

    def has_analysis(self, sid: str | None) -> bool:
        """Whether `current(sid)` has an analysis to give: held, or freed for room and able to run again."""
        with self._lock:
            data = self._sessions.get(sid or "")
            return data is not None and (data.analysis is not None or data.path is not None)

    def current(self, sid: str) -> Analysis:
        """The session's analysis; one freed to make room for other visitors' passes runs again (one pass,
        the clicked query kept)."""
        data = self.session(sid)
        analysis = data.analysis
        if analysis is None and data.path is not None:  # a removed upload: read_image says so, nothing stays
            query = data.query
            analysis = self.analyze(sid, data.path, data.size)
            data.query = query
        if analysis is None:
            raise UserError(NO_IMAGE)
        return analysis

    def gradients(self, sid: str, target: int) -> torch.Tensor:
        """Attention gradients for class `target`: one backward pass per class, then cached."""
        data = self.session(sid)
        analysis = self.current(sid)
        target = self.check_class(data.bundle, target)
        if target not in data.gradients:
            try:
                check_budget(data.bundle.config, data.size, self.limits.analysis_bytes, gradients=True)
            except BudgetError as e:
                raise UserError(f"{e}. Choose a smaller inference resolution for gradient rollout.") from None
            extra = estimate(data.bundle.config, data.size, gradients=True)  # besides the cached analysis
            with self._borrow(data, sid, extra.gradients + extra.other) as replica:
                gradients = attention_gradients(replica, analysis, target)
            while len(data.gradients) >= GRADIENT_CLASSES:  # keep the most recent few classes
                data.gradients.pop(next(iter(data.gradients)))
            data.gradients[target] = gradients
        return data.gradients[target]

    def pick_query(self, sid: str, row: int, col: int) -> tuple[int, int]:
        h, w = self.current(sid).grid
        if not (0 <= row < h and 0 <= col < w):
            raise UserError(f"patch (row {row}, column {col}) is outside the {h}x{w} patch grid")
        self.session(sid).query = (int(row), int(col))
        return self.session(sid).query

    def reset_query(self, sid: str) -> None:
        self.session(sid).query = None

    @staticmethod
    def check_class(bundle: Bundle, target: int | None) -> int:
        if target is None or not 0 <= int(target) < len(bundle.labels):
            raise UserError(f"class {target} does not exist: this model has classes 0..{len(bundle.labels) - 1}")
        return int(target)

    # ---- heavy jobs: one per session, time-limited, cancellable -----------------------------------

    @contextlib.contextmanager
    def job(self, sid: str) -> Iterator[Job]:
        data = self.session(sid)
        with self._lock:
            if data.job is not None:
                raise UserError("Another job of yours is still running: wait for it or cancel it first.")
            data.job = job = Job(self.limits.job_timeout)
        try:
            yield job
        finally:
            with self._lock:
                data.job = None
                data.last_used = time.monotonic()  # its result (an export's file) is still on its way out

    def cancel(self, sid: str) -> bool:
        """Ask this session's running job to stop; it does at its next step. True if one was running."""
        with self._lock:
            data = self._sessions.get(sid or "")
            job = data.job if data else None
        if job is not None:
            job.cancelled.set()
        return job is not None

    def attribution(self, sid: str, method: str, steps: int = 32, smooth: bool = False, target: int | None = None,
                    progress: Callable[[float], None] | None = None,
                    baseline: str = "black") -> tuple[torch.Tensor, int]:
        """Captum attribution of the current analysis for `target` (default: the predicted class)."""
        if method not in METHODS:
            raise UserError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
        if baseline not in BASELINES:
            raise UserError(f"unknown baseline {baseline!r}: choose one of {', '.join(BASELINES)}")
        if not 1 <= int(steps) <= self.limits.max_steps:
            raise UserError(f"steps must be between 1 and {self.limits.max_steps}, not {steps}")
        analysis = self.current(sid)
        data = self.session(sid)
        target = int(analysis.probs.argmax()) if target is None else self.check_class(data.bundle, target)
        size = tuple(analysis.input.shape[-2:])
        batch = gradient_batch(data.bundle.config, size, self.limits.analysis_bytes)
        need = min(self.limits.analysis_bytes, attribution_bytes(data.bundle.config, size, batch))
        with self.job(sid) as job, self._borrow(data, sid, need) as replica:
            attr = attribute(replica.model, analysis.input.to(replica.device), target, method, int(steps),
                             bool(smooth), batch, progress=progress, baseline=baseline, preprocess=replica.preprocess,
                             check=job.check)
        return attr.cpu(), target

    def faithfulness(self, sid: str, fill: str = "black", target: int | None = None,
                     progress: Callable[[float], None] | None = None) -> Scorecard:
        """The faithfulness scorecard of the current analysis for `target` (default: the predicted class):
        every explanation method's deletion/insertion curves with `fill`, the randomisation cascade,
        infidelity and sensitivity. A heavy job: one per session, time-limited, cancellable."""
        if fill not in FILLS:
            raise UserError(f"unknown fill {fill!r}: choose one of {', '.join(FILLS)}")
        analysis = self.current(sid)
        data = self.session(sid)
        target = int(analysis.probs.argmax()) if target is None else self.check_class(data.bundle, target)
        with self.job(sid) as job, self._borrow(data, sid) as replica:
            return scorecard(replica.model, analysis.input.to(replica.device), target, replica.preprocess,
                             FaithfulnessConfig(fills=(fill,)), progress=progress, check=job.check)

    # ---- scenes: the shared scene models (assets/SCENES_MODEL_CARD.md) ------------------------------

    def scene_pool(self, name: str) -> ModelPool:
        if name not in SCENE_CHECKPOINTS:
            raise UserError(f"unknown scene model {name!r}: choose one of {', '.join(SCENE_CHECKPOINTS)}")
        return self.shared_model(SCENE_CHECKPOINTS[name])

    def analyze_scene(self, name: str, scene: Scene) -> SceneAnalysis:
        """One captured pass of `scene` on scene model `name`, and the attention-based maps for the
        predicted class scored against the key objects' masks (mass and rank accuracy)."""
        pool = self.scene_pool(name)
        size = self.check_size(pool.bundle, scene.image.shape[:2])
        with self.borrow(pool, self.pass_bytes(pool.bundle, size)) as replica:
            analysis = analyze(replica, Image.fromarray(scene.image), size, bf16=self.bf16)
            maps = relevance_maps(replica, [scene], LIVE_SCENE_METHODS, targets=analysis.probs.argmax()[None])[0]
        share = float(key_mask(scene.masks).mean())  # what a uniform map scores on both, as score_methods adds
        scores = {**{m: score_scene(r, scene) for m, r in maps.items()}, "uniform map": {"mass": share, "rank": share}}
        return SceneAnalysis(scene, analysis, maps, scores)

    def score_scene_methods(self, sid: str, name: str, scene: Scene) -> dict[str, dict[str, float]]:
        """Every explanation method of the faithfulness scorecard scored against the scene's key objects
        (plus what a uniform map scores). A heavy job."""
        pool = self.scene_pool(name)
        need = self.pass_bytes(pool.bundle, scene.image.shape[:2])
        with self.job(sid) as job, self.borrow(pool, need, keep=sid) as replica:
            return score_methods(replica, [scene], check=job.check)

    def scene_heads(self, sid: str, name: str, count: int = 200, k: int = 2,
                    progress: Callable[[float], None] | None = None) -> SceneHeads:
        """Per-head attention mass on the key objects over `count` test scenes, and the accuracy with
        the k most (and least, and k random) object-focused heads silenced. A heavy job, cached per model."""
        key = (name, count, k)
        if key in self._scene_heads:
            return self._scene_heads[key]
        pool = self.scene_pool(name)
        tell = progress or (lambda fraction: None)
        need = self.pass_bytes(pool.bundle, pool.bundle.preprocess.image_size)
        with self.job(sid) as job, self.borrow(pool, need, keep=sid) as replica:
            scenes = make_scenes(count, TEST_SEED, progress=lambda f: tell(0.3 * f), check=job.check)
            mass = head_object_mass(replica, scenes, check=job.check)
            tell(0.5)
            silenced = {}
            for i, query in enumerate(("cls", "patches")):
                job.check()
                silenced[query] = silencing(replica, scenes, mass[query], k)
                tell(0.5 + 0.25 * (i + 1))
        result = SceneHeads(mass, silenced, count, k)
        self._scene_heads[key] = result
        return result

    def whatif(self, sid: str, heads_off: dict[int, list[int]], rotary_off: list[int]) -> Analysis:
        analysis = self.current(sid)
        if not any(heads_off.values()) and not rotary_off:
            raise NothingChosen("Choose at least one head or one layer to switch off.")
        data = self.session(sid)
        with self._borrow(data, sid) as replica:
            return analyze_input(replica, analysis.input, analysis.image, heads_off=heads_off,
                                 rotary_off=rotary_off, bf16=self.bf16)

    def export(self, sid: str, progress: Callable[[float, str], None] | None = None) -> Path:
        """A zip of every panel, summary.json and tensors.npz, in the service's managed folder."""
        from viz.report import write_report

        analysis = self.current(sid)
        data = self.session(sid)
        if data.export_dir is not None:
            shutil.rmtree(data.export_dir, ignore_errors=True)  # one export per session on disk
        data.export_dir = Path(tempfile.mkdtemp(prefix="export-", dir=self._exports))
        with self.job(sid) as job, self._borrow(data, sid) as replica:
            def tick(fraction: float, what: str) -> None:
                job.check()
                if progress is not None:
                    progress(fraction, what)
            write_report(analysis, replica, data.export_dir / "report", progress=tick, check=job.check)
        return Path(shutil.make_archive(str(data.export_dir / "rvt-lens-report"), "zip", data.export_dir / "report"))

"""Where and how the model runs: device, precision and CPU threads, each chosen on purpose and overridable.

- `pick_device`: CUDA when present, else Apple MPS, else the CPU.
- Precision ("fp32" | "bf16"): `autocast` for a captured pass (CPU and CUDA), `with_precision` for a
  bfloat16-weights copy of a model (the fastest bf16 path on CPU: 0.5x of the fp32 reference at
  224/16), `prediction_agreement` to report what bf16 changes.
- `thread_policy`: the intra-op thread count and the OpenMP wait policy, for the app and benchmarks.
"""
from __future__ import annotations

import contextlib
import copy
import os

import torch
from torch import nn

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("fp32", "bf16")


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """'auto' (or None) picks the best available device; a named one must exist."""
    if isinstance(name, torch.device):
        return name
    name = (name or "auto").lower()
    kind = name.split(":")[0]
    if kind not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {name!r}: choose one of {', '.join(DEVICE_CHOICES)} (cuda:N works too)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA GPU")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for but this torch has no Apple MPS backend")
    return torch.device(name)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    return precision


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA and on the CPU when asked; a no-op otherwise (MPS runs in fp32)."""
    if bf16 and device.type in ("cuda", "cpu"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _to_bf16(_module, args):
    return (args[0].to(torch.bfloat16), *args[1:])


def _to_fp32(_module, _args, output):
    return output.float()


def with_precision(model: nn.Module, precision: str, *, compile: bool = False) -> nn.Module:
    """fp32: `model` itself. bf16: a copy with bfloat16 weights that takes and returns float32.

    The rotary frequencies stay float32 (in bf16, 13.5 * pi at 224/16 is off by whole turns at the
    grid's edge). The copy casts its input and logits with two permanent hooks of its own; `model`
    is untouched. On CPU this runs at 0.40-0.45x of the fp32 reference's time at 224/16; agreement
    with fp32 is what `prediction_agreement` (and `python -m rvt.evaluate --precision bf16`) report.

    compile: opt-in `torch.compile` of the result (a copy for fp32 too), for plain forward passes
    (evaluation, serving logits), not for captures. At 224/16 batch 1 on CPU it took bf16 from 0.40x
    to 0.33x of the reference, 28/4 from 0.99x to 0.71x (benchmarks/forward.py --compile), after a
    compilation of minutes on a 2-core host; the rotary's real-valued form is what lets it fuse.
    """
    if check_precision(precision) == "fp32":
        fast = copy.deepcopy(model) if compile else model
    else:
        fast = copy.deepcopy(model).to(torch.bfloat16)
        rotary = getattr(getattr(fast, "transformer", None), "pos_emb", None)
        if rotary is not None and hasattr(rotary, "scales"):
            rotary.scales = model.transformer.pos_emb.scales.detach().clone().float()
        fast.register_forward_pre_hook(_to_bf16)
        fast.register_forward_hook(_to_fp32)
    return torch.compile(fast) if compile else fast


@torch.no_grad()
def prediction_agreement(reference: nn.Module, other: nn.Module, images: torch.Tensor, normalize,
                         device: torch.device, batch: int = 500) -> float:
    """Fraction of `images` on which both models give the same top-1 class."""
    same = 0
    for i in range(0, len(images), batch):
        x = normalize(images[i:i + batch].to(device))
        same += int((reference(x).argmax(-1) == other(x).argmax(-1)).sum())
    return same / max(1, len(images))


def thread_policy(threads: int | None = None) -> dict[str, object]:
    """Set torch's intra-op thread count on purpose and return what was chosen.

    threads: explicit count; else env RVT_THREADS; else 1 on hosts with at most 2 usable cores
    (where OpenMP workers spinning against other processes made the 28/4 forward 30x slower),
    else half the usable cores up to 8 (the other half serves requests and other sessions).
    OMP_WAIT_POLICY=PASSIVE is exported when not set: idle OpenMP workers sleep instead of
    spinning. libgomp reads it when torch is imported, so for this process it takes effect only
    if set before `import torch` (the app's and benchmarks' entry points do); child processes
    always inherit it.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if threads is None:
        env = os.environ.get("RVT_THREADS", "")
        threads = int(env) if env else (1 if cores <= 2 else min(8, cores // 2))
    if threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads}")
    torch.set_num_threads(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return {"threads": threads, "usable_cores": cores, "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}

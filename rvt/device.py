"""Where the model runs: CUDA when present, else Apple MPS, else the CPU; always overridable."""
from __future__ import annotations

import contextlib

import torch

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


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


def autocast(device: torch.device, bf16: bool):
    """bf16 autocast on CUDA when asked; a no-op elsewhere (CPU and MPS run in fp32)."""
    if bf16 and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()

"""Checkpoints: the project's safetensors format, and plain vit-pytorch RvT state_dicts.

The project's format is one `.safetensors` file: the weights, with the model config, class labels
and preprocessing stored as JSON in the safetensors metadata, so a single upload is a whole model.
A vit-pytorch `state_dict` saved with `torch.save` is read with `weights_only=True` (a pickle that
tries to build anything other than tensors is refused before it runs), and the config is inferred
from tensor shapes; what shapes cannot tell must be given.
"""
from __future__ import annotations

import json
import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .device import pick_device
from .grid import patch_grid
from .model import RvT, RvTConfig
from .preprocess import Preprocess

FORMAT = "rvt-lens/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and what is accepted."""


@dataclass
class Bundle:
    model: RvT
    labels: list[str]
    config: RvTConfig
    preprocess: Preprocess
    device: torch.device
    source: str = ""
    notes: list[str] = field(default_factory=list)  # assumptions made while loading, for the UI

    @property
    def train_grid(self) -> tuple[int, int]:
        """(h, w) patch grid at the resolution the model was trained for."""
        return patch_grid(self.preprocess.image_size, self.config.patch_size)

    @property
    def rotary_scales(self) -> torch.Tensor:
        """The rotary frequency bands (bands,), on the CPU."""
        return self.model.transformer.pos_emb.scales.cpu()

    def novelty(self, image):
        """How unlike the training data a PIL image is: an object with `.score` and `.flag` (rvt.novelty)."""
        from .novelty import novelty  # imported here: novelty needs the bundle's own features

        return novelty(self, image)


def save_checkpoint(path: str | Path, model: RvT, labels: list[str], preprocess: Preprocess,
                    training: dict | None = None) -> Path:
    path = Path(path)
    if len(labels) != model.config.num_classes:
        raise ValueError(f"{len(labels)} labels for a model with {model.config.num_classes} classes")
    metadata = {
        "format": FORMAT,
        "config": json.dumps(model.config.to_dict()),
        "labels": json.dumps(list(labels)),
        "preprocess": json.dumps(preprocess.to_dict()),
        "training": json.dumps(training or {}),
    }
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def _sniff(path: Path) -> str:
    with path.open("rb") as f:
        head = f.read(9)
    # safetensors first: its 8-byte little-endian header length can start with 0x80, a pickle's opcode.
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "torch-legacy"
    return "unknown"


def _read_safetensors(path: Path) -> tuple[dict, dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path.name}: a damaged safetensors file ({e})") from None


def _read_torch(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path.name}: refused, the pickle holds objects other than tensors and plain containers "
            f"(code to run, or a whole nn.Module); nothing in it was executed. Save `model.state_dict()` "
            f"with torch.save, or use the project's .safetensors format. Detail: {str(e).splitlines()[0]}"
        ) from None
    except Exception as e:  # a truncated zip, a foreign pickle, ...: all mean the same to a user
        raise CheckpointError(f"{path.name}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path.name}: holds a {type(obj).__name__}, not a state_dict of tensors")
    # Wrappers people train with: DataParallel ('module.') and torch.compile ('_orig_mod.').
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


def _need(state: dict, key: str) -> torch.Tensor:
    if key not in state:
        raise CheckpointError(f"missing key {key!r}: this does not look like a vit-pytorch RvT state_dict")
    return state[key]


def infer_config(state: dict, *, image_size: int | None = None, patch_size: int | None = None,
                 channels: int | None = None, dim_head: int | None = None,
                 use_rotary: bool | None = None) -> tuple[RvTConfig, list[str]]:
    """Config of a vit-pytorch RvT from its state_dict; returns (config, notes on assumptions)."""
    notes = []
    dim = _need(state, "cls_token").shape[-1]
    num_classes = _need(state, "mlp_head.1.weight").shape[0]
    scales = _need(state, "transformer.pos_emb.scales")
    depth = len({int(m.group(1)) for k in state if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    inner_dim = _need(state, "transformer.layers.0.0.to_kv.weight").shape[0] // 2
    mlp_dim = _need(state, "transformer.layers.0.1.net.4.weight").shape[1]
    use_glu = _need(state, "transformer.layers.0.1.net.1.weight").shape[0] == 2 * mlp_dim
    use_ds_conv = "transformer.layers.0.0.to_q.conv.net.0.weight" in state
    patch_dim = _need(state, "to_patch_embedding.1.weight").shape[1]

    # The rotary buffer is linspace(1, image_size / 2, dim_head // 4): its end gives image_size.
    from_scales = round(float(scales[-1]) * 2) if scales.numel() > 1 else None
    if image_size is None:
        if from_scales is None:
            raise CheckpointError("cannot tell the training image size from this state_dict: give image_size")
        image_size = from_scales
    elif from_scales is not None and from_scales != image_size:
        raise CheckpointError(f"image_size={image_size} disagrees with the checkpoint's rotary frequencies, "
                              f"which were built for image_size={from_scales}")

    if dim_head is None:
        # dim_head // 4 == bands, so dim_head is 4*bands .. 4*bands+3; the multiple of 4 is the usual one.
        options = [d for d in range(4 * scales.numel(), 4 * scales.numel() + 4) if d and inner_dim % d == 0]
        if not options:
            raise CheckpointError(f"no dim_head fits {scales.numel()} rotary bands and {inner_dim} inner dims")
        dim_head = options[0]
        if len(options) > 1:
            notes.append(f"dim_head could be any of {options}; assumed {dim_head} (pass dim_head to override)")

    if patch_size is None:
        options = []
        for c in ([channels] if channels else [1, 3]):  # 1 and 3 can never both fit
            p = math.isqrt(patch_dim // c) if patch_dim % c == 0 else 0
            if p and p * p * c == patch_dim and image_size % p == 0:
                options.append((p, c))
        if len(options) != 1:
            raise CheckpointError(f"a patch embedding of {patch_dim} inputs is neither grayscale nor RGB "
                                  f"square patches that divide image_size {image_size}: give patch_size and channels")
        patch_size, channels = options[0]
    elif channels is None:
        channels, rest = divmod(patch_dim, patch_size ** 2)
        if rest or not channels:
            raise CheckpointError(f"patch_size={patch_size} does not fit a patch embedding of {patch_dim} inputs")

    if use_rotary is None:
        use_rotary = True
        notes.append("use_rotary is not stored in a state_dict; assumed True (vit-pytorch's default)")

    config = RvTConfig(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim,
                       depth=depth, heads=inner_dim // dim_head, mlp_dim=mlp_dim, channels=channels,
                       dim_head=dim_head, use_rotary=use_rotary, use_ds_conv=use_ds_conv, use_glu=use_glu)
    return config, notes


def _load_weights(model: RvT, state: dict) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"keys do not match the model: missing {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''}")
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise CheckpointError(f"shape mismatch for {key}: checkpoint has {tuple(tensor.shape)}, "
                                  f"the model expects {tuple(expected[key].shape)}")
    model.load_state_dict(state, strict=True)


def load_checkpoint(path: str | Path, device: str | torch.device | None = None, *,
                    labels: list[str] | None = None, preprocess: Preprocess | None = None,
                    **config_hints) -> Bundle:
    """Load a checkpoint into an eval-mode RvT on `device` ('auto' by default).

    Accepts the project's `.safetensors` files and vit-pytorch RvT state_dicts (`.pt`/`.pth`).
    For the latter, `config_hints` (image_size, patch_size, channels, dim_head, use_rotary) fill in
    what the tensor shapes cannot tell.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    unknown = set(config_hints) - {"image_size", "patch_size", "channels", "dim_head", "use_rotary"}
    if unknown:
        raise TypeError(f"unknown config hints {sorted(unknown)}")
    kind = _sniff(path)
    notes: list[str] = []
    if kind == "safetensors":
        state, metadata = _read_safetensors(path)
        if metadata.get("format") == FORMAT:
            try:
                config = RvTConfig(**json.loads(metadata["config"]))
                labels = labels or json.loads(metadata["labels"])
                preprocess = preprocess or Preprocess(**json.loads(metadata["preprocess"]))
            except (KeyError, TypeError, ValueError) as e:
                raise CheckpointError(f"{path.name}: its metadata is damaged ({e})") from None
        else:
            config, notes = infer_config(state, **config_hints)
    elif kind in ("torch-zip", "torch-legacy"):
        state = _read_torch(path)
        config, notes = infer_config(state, **config_hints)
    else:
        raise CheckpointError(f"{path.name}: not a checkpoint. Accepted: the project's .safetensors files, "
                              f"or a vit-pytorch RvT state_dict saved with torch.save (.pt/.pth)")

    if labels is None:
        labels = [f"class {i}" for i in range(config.num_classes)]
        notes.append("no class names in the checkpoint; showing class indices")
    if len(labels) != config.num_classes:
        raise CheckpointError(f"{len(labels)} labels given for a model with {config.num_classes} classes")
    if preprocess is None:
        preprocess = Preprocess(image_size=(config.image_size, config.image_size), channels=config.channels,
                                mean=[0.5] * config.channels, std=[0.5] * config.channels,
                                invert="never", fit="pad")
        notes.append("no preprocessing in the checkpoint; assuming inputs normalised with mean 0.5, std 0.5")

    model = RvT.from_config(config)
    _load_weights(model, state)
    device = pick_device(device)
    model.to(device).eval().requires_grad_(False)
    return Bundle(model=model, labels=list(labels), config=config, preprocess=preprocess,
                  device=device, source=str(path), notes=notes)

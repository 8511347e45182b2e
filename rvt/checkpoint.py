"""Checkpoints: the project's safetensors format, and plain vit-pytorch RvT state_dicts.

The project's format is one `.safetensors` file: the weights, with the model config, class labels
and preprocessing stored as JSON in the safetensors metadata, so a single upload is a whole model.
A vit-pytorch `state_dict` saved with `torch.save` is read with `weights_only=True` (a pickle that
tries to build anything other than tensors is refused before it runs), and the config is inferred
from tensor shapes; what shapes cannot tell must be given.

Uploads are untrusted, so loading validates before it allocates: the safetensors header is parsed
here (its offsets must tile the file, dtypes must be floating, shapes must be the ones the config
implies, computed on the meta device); a torch zip's declared entry sizes are summed before
`torch.load` inflates anything; every size is held to `ModelLimits`, which the server sets and no
checkpoint can raise. After loading, non-finite weights and models whose output ignores the input
are refused, so broken weights are never shown as predictions.
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .device import pick_device
from .grid import patch_grid
from .model import RvT, RvTConfig
from .preprocess import Preprocess

FORMAT = "rvt-lens/1"
ACCEPTED = ("Accepted: the project's .safetensors files, or a vit-pytorch RvT state_dict saved with "
            "torch.save(model.state_dict(), path) (.pt/.pth).")
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}
MAX_HEADER_BYTES = 4 * 2**20  # a safetensors header: ~100 bytes a tensor, plus config and labels (22k: ~1 MB)
MAX_TENSORS = 4096  # a depth-32 RvT has ~600
MAX_PICKLE_BYTES = 32 * 2**20  # a torch zip's data.pkl: a state_dict's is ~100 bytes a tensor
MAX_ZIP_ENTRIES = 3 * MAX_TENSORS  # one per storage: weights plus an optimizer's two moments
MAX_DEFLATE_RATIO = 100  # torch.save stores entries uncompressed; weights deflate ~1.1x, zeros ~1000x

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and what is accepted."""


@dataclass(frozen=True)
class ModelLimits:
    """The largest model this server loads. Set by whoever runs it; nothing a checkpoint declares
    (config, preprocessing size, rotary frequencies) can raise it.

    The defaults admit the bundled model (28 px, 0.6 M parameters), a ViT-S-sized RvT at 224/16
    (dim 384, depth 12, 6 heads of 64, mlp 1536: 29 M parameters with 1000 classes) and the
    vit-pytorch models people train on small images, and refuse ViT-B sizes and above (a CPU demo).
    """

    max_parameters: int = 64_000_000  # 256 MB in fp32: twice a ViT-S-sized RvT
    max_bytes: int = 400_000_000  # read from one file: ViT-S weights plus their AdamW state (3 x 116 MB) fit
    max_dim: int = 1024  # ViT-L's width
    max_depth: int = 32  # ViT-L has 24 layers
    max_heads: int = 16
    max_dim_head: int = 128  # 64 is usual
    max_mlp_dim: int = 4096  # ViT-L's MLP
    max_image_size: int = 512  # px per side of the training resolution
    max_patches: int = 1024  # tokens at the training resolution (a 32x32 grid): attention costs N^2 per head
    max_num_classes: int = 22_000  # ImageNet-21k's 21,843 classes fit

    def check(self, config: RvTConfig) -> None:
        """Raise CheckpointError naming the first limit `config` exceeds; allocates nothing real."""
        for name in ("dim", "depth", "heads", "dim_head", "mlp_dim", "image_size", "num_classes"):
            value, limit = getattr(config, name), getattr(self, "max_" + name)
            if value > limit:
                raise CheckpointError(f"the model's {name} is {value}, above this server's limit of {limit} "
                                      f"(ModelLimits.max_{name}). Accepted: {name} up to {limit}.")
        h, w = patch_grid((config.image_size,) * 2, config.patch_size)
        if h * w > self.max_patches:
            raise CheckpointError(f"the model sees {h}x{w} = {h * w} patches at its {config.image_size} px training "
                                  f"size, above this server's limit of {self.max_patches} (ModelLimits.max_patches). "
                                  f"Accepted: up to {self.max_patches} patches, e.g. a larger patch_size.")
        n = sum(math.prod(s) for s in expected_shapes(config).values())
        if n > self.max_parameters:
            raise CheckpointError(f"the model has {n:,} parameters, above this server's limit of "
                                  f"{self.max_parameters:,} (ModelLimits.max_parameters). Accepted: up to "
                                  f"{self.max_parameters:,} parameters.")


def expected_shapes(config: RvTConfig) -> dict[str, tuple[int, ...]]:
    """The state_dict shapes an RvT with `config` has, built on the meta device (no memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in RvT(config).state_dict().items()}


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


# ---- safetensors: the header is parsed and checked here, before the library reads any tensor ----------

def _unique_keys(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise CheckpointError(f"the safetensors header names {sorted({k for k in keys if keys.count(k) > 1})[:3]} "
                              f"twice. Accepted: a header with one entry per tensor.")
    return dict(pairs)


def _is_int(x) -> bool:
    return type(x) is int and x >= 0


def _safetensors_header(path: Path, limits: ModelLimits) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """(name -> shape, metadata) from a safetensors header, once every entry is proven consistent."""
    size = path.stat().st_size
    with path.open("rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise CheckpointError(f"a safetensors header of {n:,} bytes is declared, in a file of {size:,} bytes. "
                                  f"Accepted: a header that fits in the file, up to {MAX_HEADER_BYTES:,} bytes.")
        raw = f.read(n)
    too_many = CheckpointError(f"the safetensors header lists more than {MAX_TENSORS:,} tensors. Accepted: up to "
                               f"{MAX_TENSORS:,}, as an RvT within this server's limits has at most a few hundred.")
    if raw.count(b'"data_offsets"') > MAX_TENSORS:  # a cheap early bound; the parsed count is checked below
        raise too_many
    try:
        header = json.loads(raw, object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise CheckpointError("the safetensors header is not valid JSON (a damaged or truncated file). "
                              "Accepted: a file written by safetensors' save_file.") from None
    if not isinstance(header, dict):
        raise CheckpointError("the safetensors header is not a JSON object. Accepted: a file written by save_file.")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError("the safetensors metadata is not a mapping of strings. Accepted: save_file's metadata.")

    if len(header) > MAX_TENSORS:
        raise too_many
    shapes, spans, total = {}, [], 0
    for name, entry in header.items():
        if not (isinstance(entry, dict) and set(entry) == {"dtype", "shape", "data_offsets"}
                and isinstance(entry["shape"], list) and len(entry["shape"]) <= 8
                and all(map(_is_int, entry["shape"])) and isinstance(entry["data_offsets"], list)
                and len(entry["data_offsets"]) == 2 and all(map(_is_int, entry["data_offsets"]))):
            raise CheckpointError(f"tensor {name!r} has a malformed header entry. Accepted: dtype, a shape of "
                                  f"non-negative integers and two data offsets, as save_file writes them.")
        dtype = FLOAT_DTYPES.get(entry["dtype"])
        if dtype is None:
            raise CheckpointError(f"tensor {name!r} is stored as {entry['dtype']}, not as floating-point weights. "
                                  f"Accepted: floating-point tensors ({', '.join(FLOAT_DTYPES)}).")
        begin, end = entry["data_offsets"]
        nbytes = math.prod(entry["shape"]) * dtype.itemsize
        if end - begin != nbytes:
            raise CheckpointError(f"tensor {name!r} declares shape {entry['shape']} ({nbytes:,} bytes) but data "
                                  f"offsets spanning {end - begin:,} bytes. Accepted: offsets that match the shape.")
        shapes[name] = tuple(entry["shape"])
        spans.append((begin, end, name))
        total += nbytes
    if total > limits.max_bytes:
        raise CheckpointError(f"the tensors declare {total:,} bytes, above this server's limit of "
                              f"{limits.max_bytes:,} (ModelLimits.max_bytes). Accepted: up to that many bytes.")
    cursor, data_bytes = 0, size - 8 - n
    for begin, end, name in sorted(spans):
        if begin != cursor or end > data_bytes:
            problem = ("overlaps the previous one" if begin < cursor else
                       "runs past the end of the file" if end > data_bytes else "leaves a gap before it")
            raise CheckpointError(f"tensor {name!r} at bytes {begin:,}..{end:,} {problem} (the file holds "
                                  f"{data_bytes:,} data bytes). Accepted: tensors that tile the data exactly, "
                                  f"as save_file writes them; the file may be truncated or forged.")
        cursor = end
    if cursor != data_bytes:
        raise CheckpointError(f"the header accounts for {cursor:,} data bytes, the file holds {data_bytes:,}. "
                              f"Accepted: tensors that tile the data exactly, as save_file writes them.")
    return shapes, metadata


def _project_metadata(metadata: dict) -> tuple[RvTConfig, list[str], Preprocess]:
    try:
        config = RvTConfig(**json.loads(metadata["config"]))
        labels = json.loads(metadata["labels"])
        preprocess = Preprocess(**json.loads(metadata["preprocess"]))
        if not isinstance(labels, list) or not all(isinstance(label, str) for label in labels):
            raise TypeError("labels must be a list of strings")
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"its metadata is damaged ({e}). Accepted: config, labels and preprocess as "
                              f"rvt.save_checkpoint writes them.") from None
    return config, labels, preprocess


def _read_safetensors(path: Path, names: list[str]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError) as e:
        log.info("safetensors refused %s: %s", path, e)
        raise CheckpointError("a damaged safetensors file. Accepted: a file written by save_file.") from None


# ---- torch.save files: zip entries are sized before torch.load inflates them --------------------------

def _check_zip(path: Path, limits: ModelLimits) -> None:
    damaged = CheckpointError(f"a damaged or truncated zip archive, not a readable torch checkpoint. {ACCEPTED}")
    try:
        with path.open("rb") as f:
            end = zipfile._EndRecData(f)  # the central directory's size and entry count, read before parsing it
    except (OSError, ValueError, EOFError):
        raise damaged from None
    if end is None:
        raise damaged
    if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_ZIP_ENTRIES or end[zipfile._ECD_SIZE] > MAX_ZIP_ENTRIES * 1024:
        raise CheckpointError(f"the zip declares {end[zipfile._ECD_ENTRIES_TOTAL]:,} entries in a "
                              f"{end[zipfile._ECD_SIZE]:,}-byte directory. Accepted: up to {MAX_ZIP_ENTRIES:,} "
                              f"entries, as torch.save writes one per tensor.")
    try:
        with zipfile.ZipFile(path) as z:
            entries = z.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise damaged from None
    total = sum(e.file_size for e in entries)
    if total > limits.max_bytes:
        raise CheckpointError(f"its zip entries declare {total:,} bytes once unpacked, above this server's limit "
                              f"of {limits.max_bytes:,} (ModelLimits.max_bytes). Accepted: up to that many bytes.")
    for e in entries:
        if e.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise CheckpointError(f"zip entry {e.filename!r} uses compression method {e.compress_type}. "
                                  f"Accepted: stored entries, as torch.save writes them (or deflated).")
        if e.filename.endswith("data.pkl") and e.file_size > MAX_PICKLE_BYTES:
            raise CheckpointError(f"its pickle {e.filename!r} declares {e.file_size:,} bytes. Accepted: up to "
                                  f"{MAX_PICKLE_BYTES:,} bytes, as a state_dict's pickle is a few kB.")
        if e.file_size > 2**20 and e.file_size > MAX_DEFLATE_RATIO * max(e.compress_size, 1):
            raise CheckpointError(f"a zip bomb: entry {e.filename!r} unpacks {e.compress_size:,} bytes into "
                                  f"{e.file_size:,}. Accepted: entries compressed at most {MAX_DEFLATE_RATIO}:1; "
                                  f"torch.save does not compress.")


def _pickle_refusal(e: Exception) -> CheckpointError:
    """What a refused pickle holds, in words: torch's own message has colour codes and advice to unsafe-load."""
    plain = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    found = re.search(r"\bGLOBAL ([\w.]+)", plain)  # the class or function the pickle asked for
    what = f"refers to `{found.group(1)}`, which is" if found else "holds an object that is"
    return CheckpointError(
        f"refused: the pickle {what} neither a tensor nor a plain container (dict, list, number, string). "
        f"Building it would run code from the file, so nothing in it was executed. Accepted: a state_dict of "
        f"tensors; for a whole model saved with torch.save(model), save torch.save(model.state_dict(), "
        f"'model.pt') instead, or use the project's .safetensors format (rvt.save_checkpoint).")


def _read_torch(path: Path, kind: str, limits: ModelLimits) -> dict[str, torch.Tensor]:
    if kind == "torch-zip":
        _check_zip(path, limits)
    elif path.stat().st_size > limits.max_bytes:  # a legacy pickle holds its tensors inline
        raise CheckpointError(f"a {path.stat().st_size:,}-byte legacy torch file, above this server's limit of "
                              f"{limits.max_bytes:,} bytes (ModelLimits.max_bytes). Accepted: smaller files, or "
                              f"the zip format torch.save writes by default.")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise _pickle_refusal(e) from None
    except Exception as e:  # a truncated zip, a foreign pickle, ...: all mean the same to a user
        log.info("torch.load refused %s: %s: %s", path, type(e).__name__, e)
        raise CheckpointError(f"not a readable torch checkpoint (damaged, truncated or not made by torch.save). "
                              f"{ACCEPTED}") from None
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"it holds a {type(obj).__name__}, not a state_dict of tensors. {ACCEPTED}")
    for name, tensor in obj.items():
        if tensor.dtype not in FLOAT_DTYPES.values():
            raise CheckpointError(f"tensor {name!r} is stored as {tensor.dtype}, not as floating-point weights. "
                                  f"Accepted: floating-point tensors (float16, bfloat16, float32, float64).")
    # Wrappers people train with: DataParallel ('module.') and torch.compile ('_orig_mod.').
    return {re.sub(r"^(module\.|_orig_mod\.)+", "", k): v for k, v in obj.items()}


# ---- config: stored, or inferred from shapes ---------------------------------------------------------

def _need(shapes: dict, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"missing key {key!r}: this does not look like a vit-pytorch RvT state_dict. "
                              f"{ACCEPTED}")
    return shapes[key]


def infer_config(state: dict, **hints) -> tuple[RvTConfig, list[str]]:
    """Config of a vit-pytorch RvT from its state_dict; returns (config, notes on assumptions).
    `hints` (image_size, patch_size, channels, dim_head, use_rotary) fill in what shapes cannot tell."""
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    return _infer_config(shapes, state.get("transformer.pos_emb.scales"), **hints)


def _infer_config(shapes: dict[str, tuple[int, ...]], scales: torch.Tensor | None, *, image_size: int | None = None,
                  patch_size: int | None = None, channels: int | None = None, dim_head: int | None = None,
                  use_rotary: bool | None = None) -> tuple[RvTConfig, list[str]]:
    notes = []
    dim = _need(shapes, "cls_token")[-1]
    num_classes = _need(shapes, "mlp_head.1.weight")[0]
    bands = math.prod(_need(shapes, "transformer.pos_emb.scales"))
    depth = len({int(m.group(1)) for k in shapes if (m := re.match(r"transformer\.layers\.(\d+)\.", k))})
    inner_dim = _need(shapes, "transformer.layers.0.0.to_kv.weight")[0] // 2
    mlp_dim = _need(shapes, "transformer.layers.0.1.net.4.weight")[1]
    use_glu = _need(shapes, "transformer.layers.0.1.net.1.weight")[0] == 2 * mlp_dim
    use_ds_conv = "transformer.layers.0.0.to_q.conv.net.0.weight" in shapes
    patch_dim = _need(shapes, "to_patch_embedding.1.weight")[1]

    # The rotary buffer is linspace(1, image_size / 2, dim_head // 4): its end gives image_size.
    top = float(scales.reshape(-1)[-1]) if scales is not None and bands > 1 else None
    if top is not None and not (1 <= top <= 2**20):
        raise CheckpointError(f"the rotary frequencies end at {top}, which no image size gives. "
                              f"Accepted: an RvT's transformer.pos_emb.scales, linspace(1, image_size / 2, ...).")
    from_scales = round(top * 2) if top is not None else None
    if image_size is None:
        if from_scales is None:
            raise CheckpointError("cannot tell the training image size from this state_dict (one rotary band "
                                  "does not encode it). Accepted: the image_size hint, set when loading.")
        image_size = from_scales
    elif from_scales is not None and from_scales != image_size:
        raise CheckpointError(f"image_size={image_size} disagrees with the checkpoint's rotary frequencies, "
                              f"which were built for image_size={from_scales}. Accepted: image_size={from_scales}, "
                              f"or no image_size hint.")

    if dim_head is None:
        # dim_head // 4 == bands, so dim_head is 4*bands .. 4*bands+3; the multiple of 4 is the usual one.
        options = [d for d in range(4 * bands, 4 * bands + 4) if d and inner_dim % d == 0]
        if not options:
            raise CheckpointError(f"no dim_head fits {bands} rotary bands and {inner_dim} inner dims. Accepted: a "
                                  f"vit-pytorch RvT, whose dim_head // 4 is the number of bands.")
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
                                  f"square patches that divide image_size {image_size}. Accepted: the patch_size "
                                  f"and channels hints, set when loading.")
        patch_size, channels = options[0]
    elif channels is None:
        channels, rest = divmod(patch_dim, patch_size ** 2)
        if rest or not channels:
            raise CheckpointError(f"patch_size={patch_size} does not fit a patch embedding of {patch_dim} inputs. "
                                  f"Accepted: a patch_size whose square divides {patch_dim}.")

    if use_rotary is None:
        use_rotary = True
        notes.append("use_rotary is not stored in a state_dict; assumed True (vit-pytorch's default)")
    try:
        config = RvTConfig(image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim,
                           depth=depth, heads=inner_dim // dim_head, mlp_dim=mlp_dim, channels=channels,
                           dim_head=dim_head, use_rotary=use_rotary, use_ds_conv=use_ds_conv, use_glu=use_glu)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"the shapes give no valid RvT config ({e}). {ACCEPTED}") from None
    return config, notes


def _check_preprocess(preprocess: Preprocess, config: RvTConfig, limits: ModelLimits) -> None:
    h, w = preprocess.image_size
    if preprocess.channels != config.channels:
        raise CheckpointError(f"preprocessing gives {preprocess.channels} channels, the model takes {config.channels}. "
                              f"Accepted: the same channel count in both.")
    if max(h, w) > limits.max_image_size or h < 1 or w < 1:
        raise CheckpointError(f"preprocessing asks for {h}x{w} px inputs, above this server's limit "
                              f"(ModelLimits.max_image_size). Accepted: sides of 1 to {limits.max_image_size} px.")
    if h % config.patch_size or w % config.patch_size:
        raise CheckpointError(f"preprocessing asks for {h}x{w} px inputs, not multiples of the patch size "
                              f"{config.patch_size}. Accepted: sides that are multiples of the patch size.")
    if (h // config.patch_size) * (w // config.patch_size) > limits.max_patches:
        raise CheckpointError(f"preprocessing asks for {h}x{w} px inputs, more than this server's limit of "
                              f"{limits.max_patches} patches (ModelLimits.max_patches). Accepted: up to that many "
                              f"patches.")
    stats = [*preprocess.mean, *preprocess.std]
    if (len(preprocess.mean) != config.channels or len(preprocess.std) != config.channels
            or not all(math.isfinite(x) for x in stats) or min(preprocess.std) <= 0):
        raise CheckpointError(f"preprocessing mean {preprocess.mean} / std {preprocess.std} do not normalise "
                              f"{config.channels} channel(s). Accepted: one finite mean and one positive std each.")


# ---- weights: shapes against the config, then values --------------------------------------------------

def _check_shapes(shapes: dict[str, tuple[int, ...]], config: RvTConfig) -> None:
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"keys do not match the model: missing {missing[:8]}"
                              f"{' ...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                              f"{' ...' if len(unexpected) > 8 else ''}. Accepted: exactly the state_dict "
                              f"keys of a vit-pytorch RvT with this config.")
    for key, shape in shapes.items():
        if shape != expected[key]:
            raise CheckpointError(f"shape mismatch for {key}: checkpoint has {shape}, the model expects "
                                  f"{expected[key]}. Accepted: the shapes of an RvT with this config.")


def _as_float32(state: dict[str, torch.Tensor], config: RvTConfig) -> dict[str, torch.Tensor]:
    """fp32, owning its own memory (assigned into the model as is); refuses non-finite weights by name."""
    out = {}
    for name, tensor in state.items():
        t = tensor.to(torch.float32).contiguous()
        if t.untyped_storage().nbytes() != t.nbytes:  # a view would keep its whole storage alive
            t = t.clone()
        bad = (~torch.isfinite(t)).sum().item()
        if bad:
            raise CheckpointError(f"tensor {name!r} has {bad:,} of {t.numel():,} values that are NaN or infinite "
                                  f"(in float32). Accepted: finite weights; a diverged training run stores these.")
        out[name] = t
    scales = out["transformer.pos_emb.scales"]
    expected = torch.linspace(1.0, config.image_size / 2, scales.numel())
    if not torch.allclose(scales, expected, rtol=1e-2):  # bf16 rounds to 3 digits
        raise CheckpointError(f"transformer.pos_emb.scales is not linspace(1, {config.image_size} / 2, "
                              f"{scales.numel()}), which image_size {config.image_size} gives. Accepted: the rotary "
                              f"frequencies vit-pytorch computes; they are not learned.")
    return out


def _check_responds(model: RvT, config: RvTConfig) -> None:
    """Refuse a model whose output overflows, or ignores its input, on three random images.

    A model whose logits are the same for every input (all-constant weights, a zeroed patch embedding
    or head) would show one class at a fixed confidence for any upload: not a result. The probe is a
    grid of at most 4x4 patches, so it costs little for any model within the limits.
    """
    h, w = (min(s, 4) * config.patch_size for s in patch_grid((config.image_size,) * 2, config.patch_size))
    x = torch.randn(3, config.channels, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(x)  # (3, num_classes)
    if not torch.isfinite(logits).all():
        raise CheckpointError("the weights are finite, but the model's outputs overflow to NaN or infinity on a "
                              "random image. Accepted: weights that give finite logits.")
    spread = (logits - logits[:1]).abs().max().item()
    if spread <= 1e-6 * (1 + logits.abs().max().item()):
        constant = [n for n, t in model.state_dict().items() if t.numel() > 1 and t.dim() > 1 and t.std() == 0]
        raise CheckpointError(f"the model's output does not depend on its input: three different images give "
                              f"the same logits, so every prediction would be the same. Constant weight tensors: "
                              f"{constant[:4] or 'none'}{' ...' if len(constant) > 4 else ''}. Accepted: a trained "
                              f"or randomly initialised RvT.")


def load_checkpoint(path: str | Path, device: str | torch.device | None = None, *,
                    labels: list[str] | None = None, preprocess: Preprocess | None = None,
                    limits: ModelLimits | None = None, **config_hints) -> Bundle:
    """Load a checkpoint into an eval-mode RvT on `device` ('auto' by default).

    Accepts the project's `.safetensors` files and vit-pytorch RvT state_dicts (`.pt`/`.pth`).
    For the latter, `config_hints` (image_size, patch_size, channels, dim_head, use_rotary) fill in
    what the tensor shapes cannot tell. Everything is held to `limits` (ModelLimits() by default)
    before the model or its tensors are allocated. Raises CheckpointError, prefixed with the file name.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file.")
    unknown = set(config_hints) - {"image_size", "patch_size", "channels", "dim_head", "use_rotary"}
    if unknown:
        raise TypeError(f"unknown config hints {sorted(unknown)}")
    device = pick_device(device)
    try:
        return _load(path, device, labels, preprocess, limits or ModelLimits(), config_hints)
    except CheckpointError as e:
        raise CheckpointError(f"{path.name}: {e}") from None


def _load(path: Path, device: torch.device, labels: list[str] | None, preprocess: Preprocess | None,
          limits: ModelLimits, hints: dict) -> Bundle:
    kind = _sniff(path)
    notes: list[str] = []
    if kind == "safetensors":
        shapes, metadata = _safetensors_header(path, limits)
        if metadata.get("format") == FORMAT:
            config, stored_labels, stored_preprocess = _project_metadata(metadata)
            labels, preprocess = labels or stored_labels, preprocess or stored_preprocess
        else:
            key = "transformer.pos_emb.scales"  # the one tensor read before the checks: its end gives image_size
            if math.prod(shapes.get(key, ())) > limits.max_dim_head // 4:
                raise CheckpointError(f"{key} has {math.prod(shapes[key])} rotary bands, more than this server's "
                                      f"limit of dim_head {limits.max_dim_head} allows (ModelLimits.max_dim_head). "
                                      f"Accepted: up to {limits.max_dim_head // 4} bands.")
            scales = _read_safetensors(path, [key])[key] if key in shapes else None
            config, notes = _infer_config(shapes, scales, **hints)
        limits.check(config)
        _check_shapes(shapes, config)
        state = _read_safetensors(path, list(shapes))
    elif kind in ("torch-zip", "torch-legacy"):
        state = _read_torch(path, kind, limits)
        shapes = {k: tuple(v.shape) for k, v in state.items()}
        config, notes = _infer_config(shapes, state.get("transformer.pos_emb.scales"), **hints)
        limits.check(config)
        _check_shapes(shapes, config)
    else:
        raise CheckpointError(f"not a checkpoint. {ACCEPTED}")

    if labels is None:
        labels = [f"class {i}" for i in range(config.num_classes)]
        notes.append("no class names in the checkpoint; showing class indices")
    if len(labels) != config.num_classes:
        raise CheckpointError(f"{len(labels)} labels given for a model with {config.num_classes} classes. "
                              f"Accepted: one label per class.")
    if preprocess is None:
        try:
            preprocess = Preprocess(image_size=(config.image_size, config.image_size), channels=config.channels,
                                    mean=[0.5] * config.channels, std=[0.5] * config.channels,
                                    invert="never", fit="pad")
        except ValueError as e:
            raise CheckpointError(f"no preprocessing fits this model ({e}).") from None
        notes.append("no preprocessing in the checkpoint; assuming inputs normalised with mean 0.5, std 0.5")
    _check_preprocess(preprocess, config, limits)

    state = _as_float32(state, config)
    with torch.device("meta"):
        model = RvT(config)
    model.load_state_dict(state, strict=True, assign=True)  # the checked tensors become the weights: no copy
    model.eval().requires_grad_(False)
    _check_responds(model, config)
    return Bundle(model=model.to(device), labels=list(labels), config=config, preprocess=preprocess,
                  device=device, source=str(path), notes=notes)

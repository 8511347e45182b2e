"""RvT Lens core: the model, its rotary embedding, scoped capture, interventions, checkpoints."""
from .capture import Trace, attention_blocks, capture
from .checkpoint import Bundle, CheckpointError, ModelLimits, load_checkpoint, save_checkpoint
from .device import pick_device
from .intervene import intervene
from .model import RvT, RvTConfig
from .preprocess import Preprocess

__all__ = ["RvT", "RvTConfig", "Bundle", "CheckpointError", "ModelLimits", "load_checkpoint", "save_checkpoint",
           "pick_device", "Preprocess", "capture", "Trace", "attention_blocks", "intervene"]

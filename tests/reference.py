"""Loads vit-pytorch's RvT module by file path: `import vit_pytorch` pulls torchvision, which
does not import beside the CPU torch build, but `vit_pytorch/rvt.py` itself needs only torch/einops."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def load_reference_rvt():
    name = "_vit_pytorch_rvt_reference"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("vit_pytorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("vit-pytorch is a test dependency: pip install -r requirements-dev.txt")
    path = Path(next(iter(spec.submodule_search_locations))) / "rvt.py"
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    sys.modules[name] = module
    return module

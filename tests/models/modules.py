"""The torch module of a checkpoint on disk, as the loader builds it, without the embedder around it."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch

from embedkit.models.base import EncoderModel
from embedkit.models.loading import assign_weights
from embedkit.models.registry import detect_family
from embedkit.weights import load_state_dict, tensor_shapes


def load_module(model_dir: Path) -> EncoderModel:
    """Detect the family, build it on the meta device, assign the weights by name; eval mode, fp32, CPU."""
    config = json.loads((model_dir / "config.json").read_text())
    names = set(tensor_shapes(model_dir))
    family = detect_family(config, names, str(model_dir)).family
    with torch.device("meta"):
        module, layout = importlib.import_module(family.module).build(config, names, str(model_dir))
    assign_weights(module, load_state_dict(model_dir), layout, str(model_dir))
    return module.eval()

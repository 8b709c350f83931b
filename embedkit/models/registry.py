"""config.json features + tensor names -> model family: the only architecture decision.

Never reads `_name_or_path`: a fine-tuned or re-uploaded checkpoint keeps its architecture
whatever its name says.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models import bert
from embedkit.models.loading import TensorLayout

__all__ = ["Family", "FAMILIES", "detect_family"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    name: str
    config_cls: type
    model_cls: type[nn.Module]
    layout: TensorLayout
    default_pooling: tuple[str, ...]


FAMILIES: dict[str, Family] = {
    "bert": Family("bert", bert.BertConfig, bert.Bert, bert.LAYOUT, ("mean",)),
}


def _has(names: set[str], layout: TensorLayout, suffix: str) -> bool:
    return any(prefix + suffix in names for prefix in layout.prefixes)


def _is_bert(config: dict[str, Any], names: set[str]) -> bool:
    claims = config.get("model_type") == "bert" or any(
        str(arch).startswith("Bert") for arch in config.get("architectures") or []
    )
    absolute = config.get("position_embedding_type", "absolute") == "absolute"
    return claims and absolute


def detect_family(config: dict[str, Any], tensor_names: set[str], source: str) -> Family:
    """The family that implements this checkpoint, or ModelLoadError saying what was seen."""
    if _is_bert(config, tensor_names):
        family = FAMILIES["bert"]
        if tensor_names and not _has(tensor_names, family.layout, "encoder.layer.0.attention.self.query.weight"):
            raise ModelLoadError(
                f"{source}: config.json says BERT but the weights lack BERT's tensor names "
                f"(e.g. encoder.layer.0.attention.self.query.weight)"
            )
        return family
    raise ModelLoadError(
        f"{source}: unsupported architecture (model_type={config.get('model_type')!r}, "
        f"architectures={config.get('architectures')!r}, "
        f"position_embedding_type={config.get('position_embedding_type')!r}); "
        f"built-in families: {', '.join(FAMILIES)}"
    )

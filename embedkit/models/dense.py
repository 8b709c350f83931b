"""The Dense modules of a sentence-transformers pipeline, applied to the pooled vector, for any family.

A Dense module is y = activation(x @ W.T + b) (sentence-transformers' `Dense`, weights `linear.weight`
[out, in] and `linear.bias` [out] in its folder's model.safetensors, or pytorch_model.bin in old saves).
EmbeddingGemma has two, 768 -> 3072 -> 768, no bias, identity activation. They run after pooling and
before embedkit's one normalisation (embedder.postprocess), on the torch and the ONNX backends alike:
the ONNX graph ends at the token states, pooling and these projections run in torch after it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import ModelLoadError
from embedkit.models.st_files import DenseSpec
from embedkit.weights import load_state_dict

__all__ = ["DenseStack", "load_dense"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "identity": lambda x: x,
    "tanh": torch.tanh,
    "relu": F.relu,
    "gelu": F.gelu,  # torch.nn.GELU() default: the exact (erf) form
    "sigmoid": torch.sigmoid,
}


class DenseStack(nn.Module):
    """The pipeline's Dense modules in order: pooled [B, in] -> [B, out] float32."""

    def __init__(self, specs: Sequence[DenseSpec]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(s.in_features, s.out_features, bias=s.bias) for s in specs)
        self.activations = [s.activation for s in specs]
        self.out_features = specs[-1].out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        for layer, name in zip(self.layers, self.activations, strict=True):
            x = _ACTIVATIONS[name](layer(x))
        return x


def load_dense(
    specs: Sequence[DenseSpec], in_features: int, *, allow_pickle: bool = False, device: torch.device | None = None
) -> DenseStack | None:
    """The Dense modules (float32, on `device`) for a pooled vector of `in_features`; None when there are none.

    ModelLoadError naming the folder when sizes do not chain (the first must take the pooled size, each the
    previous one's output) or a weight is missing, unexpected or mis-shaped.
    """
    if not specs:
        return None
    expected = in_features
    for spec in specs:
        if spec.in_features != expected:
            raise ModelLoadError(
                f"{spec.path / 'config.json'}: in_features {spec.in_features}, but the vector before it has {expected}"
            )
        expected = spec.out_features
    stack = DenseStack(specs)
    for spec, module in zip(specs, stack.layers, strict=True):
        layer = cast(nn.Linear, module)
        state = load_state_dict(spec.path, allow_pickle=allow_pickle)
        wanted = {"linear.weight": layer.weight, **({"linear.bias": layer.bias} if spec.bias else {})}
        unexpected = sorted(set(state) - set(wanted))
        missing = sorted(set(wanted) - set(state))
        if missing or unexpected:
            raise ModelLoadError(
                f"{spec.path}: Dense weights do not match its config.json (missing {missing}, unexpected {unexpected})"
            )
        for name, target in wanted.items():
            if tuple(state[name].shape) != tuple(target.shape):
                raise ModelLoadError(
                    f"{spec.path}: {name} has shape {tuple(state[name].shape)}, "
                    f"config.json implies {tuple(target.shape)}"
                )
            target.data.copy_(state[name].float())
    return stack.to(device=device).eval()

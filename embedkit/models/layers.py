"""Maths shared by the model files: activations, RMSNorm, rotary helpers and the attention call.

The attention backend is chosen here, once, for every family.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import ModelLoadError

__all__ = ["RMSNorm", "activation", "attention", "rotate_half"]

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "gelu": F.gelu,  # the exact (erf) form, as transformers' "gelu"
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation function a config names in `hidden_act`."""
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ModelLoadError(
            f"hidden_act={name!r} is not supported; supported: {', '.join(sorted(_ACTIVATIONS))}"
        ) from None


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q, k, v [B, nh, T, d] -> [B, nh, T, d].

    mask is either bool [B, 1, 1 or T, T] (True = may attend) or a float additive bias that
    broadcasts to [B, nh, T, T] (JinaBERT's per-head ALiBi, with -inf on padded keys).
    """
    if mask is not None and mask.dtype == torch.bool and torch.onnx.is_in_onnx_export():
        # ONNX Runtime runs a bool-masked attention as Where + IsNaN over every score matrix (18% of
        # all-MiniLM-L6-v2's time); the same mask as an additive bias is one Add
        mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(~mask, torch.finfo(q.dtype).min)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class RMSNorm(nn.Module):
    """RMSNorm (T5 style, as new-impl and Qwen): normalise in fp32, weight only."""

    def __init__(self, hidden_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary layout: the halves of the head dim are the pairs, (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)

"""Maths shared by the model files: activations, RMSNorm, RoPE (+NTK), ALiBi and attention.

Attention is written once here, for both shapes a batch comes in (`embedkit.local.batching`):

* padded, token tensors [B, T, ...] with a key mask [B, T] (CPU, ONNX export): `PaddedAttention`;
* packed, token tensors [N, ...] with `cu_seqlens` [B + 1] (CUDA): `PackedAttention`, through torch's
  variable-length flash kernel (`torch.nn.attention.varlen`) where it serves, else a stand-in that pads,
  runs the padded attention and unpads.

Both take q [..., nh, d] and k, v [..., n_kv, d] in the token layout and return [..., nh, d], so a
family's layers are written once and never see which shape they run on. Masks (padding, causal,
ALiBi) are built once per forward, when the attention object is made; a family whose scores take a learned
per-head bias (MPNet's relative positions) hands it over once per forward with `with_bias`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.errors import ModelLoadError

try:  # torch >= 2.10; older releases run the stand-in
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # pragma: no cover - depends on the installed torch
    varlen_attn = None  # type: ignore[assignment]

__all__ = [
    "ROPE_SCALINGS",
    "PackedAttention",
    "PaddedAttention",
    "RMSNorm",
    "Rope",
    "activation",
    "alibi_slopes",
    "apply_rope",
    "attention",
    "rotate_half",
    "varlen_attention",
    "varlen_serves",
]

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


# -- rotary position embeddings -------------------------------------------------------------------------

ROPE_SCALINGS = ("default", "ntk", "linear")


@dataclass(frozen=True)
class Rope:
    """Rotary embeddings, GPT-NeoX layout (halves of the head dim paired), over the full head dim.

    `scaling` "ntk" is new-impl's NTKScalingRotaryEmbedding (GTE), which rebuilds its cache for
    `max_position_embeddings * factor` positions in its constructor, so the scaled frequencies hold
    for every length:
        inv_freq_i = 1 / (theta * f) ** (2i / d) / f ** (2 / d)            (fixed NTK, kexue.fm/9706 eq. 6)
        inv_freq_i = 1 / theta ** (2i / d) / exp(a * (i + 1) ** b),  a = ln(f) / (d / 2) ** b   (mixed_b set)
    "linear" divides every frequency by f. Plain data, no buffers: the models are built on the meta device.
    """

    head_dim: int
    theta: float = 10000.0
    scaling: str = "default"
    factor: float = 1.0
    mixed_b: float | None = None

    def inv_freq(self, device: torch.device) -> torch.Tensor:
        """[d/2] fp32 inverse frequencies."""
        d, theta, factor, b = self.head_dim, self.theta, self.factor, self.mixed_b
        exponent = torch.arange(0, d, 2, device=device).float() / d  # 2i / d
        if self.scaling == "ntk" and b is None:
            return 1.0 / ((theta * factor) ** exponent) / factor ** (2 / d)
        inv_freq = 1.0 / (theta**exponent)
        if self.scaling == "ntk" and b is not None:
            a = torch.tensor(factor, device=device).log() / (d / 2) ** b
            return inv_freq / (a * torch.arange(1, d // 2 + 1, device=device).float() ** b).exp()
        if self.scaling == "linear":
            return inv_freq / factor
        return inv_freq

    def __call__(self, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids [...] -> cos, sin [..., 1, d] (the 1 broadcasts over heads), computed in fp32."""
        freqs = position_ids.float()[..., None] * self.inv_freq(position_ids.device)  # [..., d/2]
        emb = torch.cat((freqs, freqs), dim=-1).unsqueeze(-2)  # [..., 1, d]: one angle for dims i and i + d/2
        return emb.cos().to(dtype), emb.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """GPT-NeoX rotary layout: the halves of the head dim are the pairs, (x1, x2) -> (-x2, x1)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [..., nh, d] rotated by its token's angles; cos, sin [..., 1, d] from `Rope`."""
    return x * cos + rotate_half(x) * sin


# -- ALiBi ---------------------------------------------------------------------------------------------


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi slope of each head (Press et al. 2021, reference implementation), for any head count.

    n a power of two: the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8). Otherwise the slopes of
    the largest power of two c below n, then every other slope of 2c for the n - c remaining heads.
    """
    if n_heads < 1:
        raise ValueError(f"n_heads must be positive, got {n_heads}")
    closest = 2 ** math.floor(math.log2(n_heads))
    slopes = [2 ** (-8 * (i + 1) / closest) for i in range(closest)]
    if closest < n_heads:
        slopes += alibi_slopes(2 * closest)[0::2][: n_heads - closest]
    return slopes


def alibi_bias(slopes: Sequence[float], length: int, device: torch.device) -> torch.Tensor:
    """[nh, T, T] float32: -slope_h * |i - j|, symmetric (every token sees both directions)."""
    per_head = torch.tensor(list(slopes), dtype=torch.float32, device=device)  # [nh]
    positions = torch.arange(length, device=device)
    distance = (positions[None, :] - positions[:, None]).abs().to(torch.float32)  # [T, T]
    return -per_head[:, None, None] * distance


# -- attention -----------------------------------------------------------------------------------------


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


class PaddedAttention:
    """Attention over right- (or left-) padded rows: token tensors [B, T, ...].

    The mask is built here, once per forward: bool [B, 1, 1, T] (padding keys out), with the causal
    triangle [B, 1, T, T] when `causal`, or an additive [B, nh, T, T] bias when `alibi` gives the per-head
    slopes or `extra_bias` a per-head [nh, T, T] bias on the scores (T = `length`).
    """

    def __init__(
        self,
        attention_mask: torch.Tensor,
        *,
        causal: bool = False,
        alibi: Sequence[float] | None = None,
        extra_bias: torch.Tensor | None = None,
    ) -> None:
        self.attention_mask = attention_mask  # [B, T] bool
        self.causal = causal
        self.extra_bias = extra_bias  # [nh, T, T] float, added to every row's scores
        keys = attention_mask[:, None, None, :]  # [B, 1, 1, T]: every query sees the real keys
        T = attention_mask.shape[1]
        if causal:
            past = torch.ones(T, T, dtype=torch.bool, device=attention_mask.device).tril()
            # each query also sees itself: under left padding a pad query would otherwise see no key at
            # all, which SDPA backends answer differently (zeros on the CPU math path, NaN elsewhere), and
            # a NaN pad state would reach real tokens through 0 * NaN in the next layer's attention
            keys = (keys & past) | torch.eye(T, dtype=torch.bool, device=attention_mask.device)
        self.mask: torch.Tensor = keys
        self.alibi = alibi
        self._biases: dict[torch.dtype, torch.Tensor] = {}

    @property
    def length(self) -> int:
        """T, the padded length the mask (and an `extra_bias`) covers."""
        return self.attention_mask.shape[1]  # no int(): under torch.export it stays symbolic

    def with_bias(self, extra_bias: torch.Tensor) -> PaddedAttention:
        """The same attention with a per-head bias [nh, T, T] (T = `length`) added to its scaled scores."""
        return PaddedAttention(self.attention_mask, causal=self.causal, alibi=self.alibi, extra_bias=extra_bias)

    def bias(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as SDPA takes it: bool, or [B, nh, T, T] additive (ALiBi and/or `extra_bias`) with
        padded keys at the dtype's minimum (built at the first layer, shared by the rest)."""
        if self.alibi is None and self.extra_bias is None:
            return self.mask
        if dtype not in self._biases:
            device = self.attention_mask.device
            bias = torch.zeros((), dtype=dtype, device=device)  # grows to [nh, T, T] below
            if self.extra_bias is not None:
                bias = bias + self.extra_bias.to(dtype)
            if self.alibi is not None:
                bias = bias + alibi_bias(self.alibi, self.length, device).to(dtype)
            self._biases[dtype] = bias.unsqueeze(0).masked_fill(~self.mask, torch.finfo(dtype).min)
        return self._biases[dtype]

    @functools.cached_property
    def lengths(self) -> torch.Tensor:
        """[B] real tokens per row (on the mask's device)."""
        return self.attention_mask.sum(dim=1)

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """values [B, ...] (one per row) -> [B, 1, ...], broadcasting over the row's tokens."""
        return values.unsqueeze(1)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [B, T, nh, d], k, v [B, T, n_kv, d] -> [B, T, nh, d]; n_kv divides nh (grouped-query)."""
        group = q.shape[-2] // k.shape[-2]  # query head h reads kv head h // group
        if group > 1:
            k, v = k.repeat_interleave(group, dim=-2), v.repeat_interleave(group, dim=-2)
        y = attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), self.bias(q.dtype))  # [B, nh, T, d]
        return y.transpose(1, 2)


@functools.cache
def _flash_capable(device_index: int) -> bool:
    return torch.cuda.get_device_capability(device_index) >= (8, 0)  # FlashAttention-2: Ampere and later


def varlen_serves(q: torch.Tensor, alibi: Sequence[float] | None = None) -> bool:
    """Whether torch's varlen flash kernel can run this attention.

    It takes fp16/bf16 on CUDA (sm80+), head dims that are multiples of 8 up to 256, and no additive
    bias: fp32 and ALiBi (JinaBERT) run the stand-in instead.
    """
    return (
        varlen_attn is not None
        and q.is_cuda
        and q.dtype in (torch.float16, torch.bfloat16)
        and q.shape[-1] <= 256
        and q.shape[-1] % 8 == 0
        and alibi is None
        and _flash_capable(q.device.index or 0)
    )


def varlen_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_length: int,
    *,
    causal: bool,
    window: int | None = None,
) -> torch.Tensor:
    """q [N, nh, d], k, v [N, n_kv, d] packed rows -> [N, nh, d] through `torch.nn.attention.varlen`.

    cu_seqlens int32 [B + 1] on q's device; rows never see each other. `window` (bidirectional only): each
    query sees the keys within that many positions on either side (|i - j| <= window, bounds inclusive).
    """
    if varlen_attn is None:  # pragma: no cover - depends on the installed torch
        raise RuntimeError("this torch has no torch.nn.attention.varlen; use PackedAttention's stand-in")
    out = varlen_attn(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_length,
        max_length,
        window_size=(-1, 0) if causal else (-1, -1) if window is None else (window, window),
        enable_gqa=k.shape[-2] != q.shape[-2],
    )
    return cast(torch.Tensor, out)  # a tuple only when return_aux asks for the log-sum-exp too


class PackedAttention:
    """Attention over packed rows: token tensors [N, ...], row i = tokens cu_seqlens[i]:cu_seqlens[i + 1].

    On CUDA in fp16/bf16 the varlen flash kernel runs it over the N real tokens. Elsewhere (CPU,
    fp32, ALiBi or an `extra_bias`, which the kernel has no bias input for) a stand-in scatters the rows
    into [B, T], runs `PaddedAttention` and gathers them back, with index tensors only, so it never
    waits on the device either. An `extra_bias` [nh, T, T] is over that padded view (T = `length`).
    """

    def __init__(
        self,
        cu_seqlens: torch.Tensor,
        max_length: int,
        *,
        tokens: int,
        causal: bool = False,
        alibi: Sequence[float] | None = None,
        extra_bias: torch.Tensor | None = None,
    ) -> None:
        self.cu_seqlens = cu_seqlens  # int32 [B + 1], on the tokens' device
        self.max_length = max_length
        self.tokens = tokens
        self.causal = causal
        self.alibi = alibi
        self.extra_bias = extra_bias
        self.size = cu_seqlens.shape[0] - 1  # B
        self.lengths = cu_seqlens.diff()  # [B] int32
        # the row of each token, [N]; output_size keeps repeat_interleave from reading the lengths back
        self.rows = torch.repeat_interleave(
            torch.arange(self.size, device=cu_seqlens.device), self.lengths, output_size=tokens
        )

    @property
    def length(self) -> int:
        """T, the longest row: the padded length of the stand-in's view (and of an `extra_bias`)."""
        return self.max_length

    def with_bias(self, extra_bias: torch.Tensor) -> PackedAttention:
        """The same attention with a per-head bias [nh, T, T] (T = `length`) added to its scaled scores;
        each row reads its top-left [nh, L, L] corner, as in the padded view."""
        return PackedAttention(
            self.cu_seqlens,
            self.max_length,
            tokens=self.tokens,
            causal=self.causal,
            alibi=self.alibi,
            extra_bias=extra_bias,
        )

    def per_token(self, values: torch.Tensor) -> torch.Tensor:
        """values [B, ...] (one per row) -> [N, ...], each token its row's value."""
        return values.index_select(0, self.rows)

    @functools.cached_property
    def _padded(self) -> tuple[torch.Tensor, PaddedAttention]:
        """(slot of each token in the flattened [B * T], the padded attention over [B, T]); made once."""
        device, T = self.cu_seqlens.device, self.max_length
        starts = self.cu_seqlens[:-1].long()
        slots = torch.arange(self.rows.shape[0], device=device) - starts[self.rows] + self.rows * T
        mask = torch.arange(T, device=device)[None, :] < self.lengths[:, None]  # [B, T]
        return slots, PaddedAttention(mask, causal=self.causal, alibi=self.alibi, extra_bias=self.extra_bias)

    @property
    def padded_attention(self) -> PaddedAttention:
        """The padded attention over [B, T] that the stand-in runs between `pad` and `unpad`."""
        return self._padded[1]

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """[N, ...] -> [B, T, ...], zeros past each row's end."""
        slots, _ = self._padded
        out = x.new_zeros((self.size * self.max_length, *x.shape[1:]))
        return out.index_copy_(0, slots, x).unflatten(0, (self.size, self.max_length))

    def unpad(self, x: torch.Tensor) -> torch.Tensor:
        """[B, T, ...] -> [N, ...]: the real tokens, in packed order."""
        slots, _ = self._padded
        return x.flatten(0, 1).index_select(0, slots)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q [N, nh, d], k, v [N, n_kv, d] -> [N, nh, d]."""
        if self.extra_bias is None and varlen_serves(q, self.alibi):
            return varlen_attention(q, k, v, self.cu_seqlens, self.max_length, causal=self.causal)
        return self.stand_in(q, k, v)

    def stand_in(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """What the kernel computes, by pad -> PaddedAttention -> unpad: q [N, nh, d], k, v [N, n_kv, d] -> [N, nh, d].

        Also where the kernel cannot serve: fp32, the CPU, and ALiBi (the kernel takes no additive bias).
        """
        _, padded = self._padded
        return self.unpad(padded(self.pad(q), self.pad(k), self.pad(v)))

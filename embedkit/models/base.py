"""The declared model boundary: what the runtime may call on a model, and the one dispatch between shapes.

`EmbeddingModel` is the Protocol that embedkit's torch modules and its ONNX runner implement. A model
takes a `TokenBatch` (flat token ids, `cu_seqlens`, per-token position ids, per-row adapter ids on the
host) and gives the packed token states [N, H], row i being `states[cu_seqlens[i]:cu_seqlens[i + 1]]`.
`forward_padded` is the same model over a [B, T] view; it is what ONNX export traces and what the CPU
path runs.

`EncoderModel` is the torch families' base class. A family writes ONE `encode` over token tensors of
either layout ([B, T] padded or [N] packed): its layers are shape-agnostic (linear layers, norms and
RoPE act on the last dims) and only attention differs, which the attention object built here hides
(`layers.PaddedAttention` / `layers.PackedAttention`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from embedkit.models.layers import PackedAttention, PaddedAttention

if TYPE_CHECKING:
    from embedkit.local.batching import TokenBatch

__all__ = ["Attention", "EmbeddingModel", "EncoderModel", "padded_states", "positions_from_mask"]

# what a family's `encode` calls for attention: the padded or the packed form, the same interface
Attention = PaddedAttention | PackedAttention


@runtime_checkable
class EmbeddingModel(Protocol):
    """What the runtime may call on a model (torch module or ONNX runner)."""

    @property
    def hidden_size(self) -> int:
        """H, the width of a token state."""
        ...

    @property
    def max_positions(self) -> int:
        """The longest input the model reads (its position table's size when `learned_positions`)."""
        ...

    @property
    def learned_positions(self) -> bool:
        """True when positions come from a table, so nothing past `max_positions` has a position."""
        ...

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """Task adapters, index = adapter id (jina-embeddings-v3's LoRA); empty for most models."""
        ...

    @property
    def merged_adapter(self) -> int | None:
        """The adapter folded into the weights, if one is."""
        ...

    def __call__(self, batch: TokenBatch) -> torch.Tensor:
        """Token states [N, H], packed as `batch.input_ids`."""
        ...

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        adapter_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] bool, position_ids [B, T], adapter_ids [B] -> [B, T, H]."""
        ...


def padded_states(model: EmbeddingModel, batch: TokenBatch) -> torch.Tensor:
    """The padded route of the boundary, for either implementation: batch.padded() -> forward_padded ->
    its real tokens, [N, H] in the packed order (row-major over the real tokens)."""
    view = batch.padded()
    states = model.forward_padded(view.input_ids, view.attention_mask, view.position_ids, batch.adapter_ids)
    return states[view.attention_mask]


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] bool -> [B, T] int64: 0, 1, 2, ... over each row's real tokens, on either padding side; 0 on padding."""
    mask = attention_mask.long()
    return ((mask.cumsum(dim=1) - 1) * mask).clamp(min=0)


class EncoderModel(nn.Module):
    """Base class of the torch families: the boundary's attributes and the choice of shape, written once.

    A subclass sets `config` (with `hidden_size`, `max_position_embeddings`) and implements `encode`;
    `causal` and `alibi` (per-head slopes) tell the attention which masks to build.
    """

    config: Any
    learned_positions: bool = False
    causal: bool = False
    alibi: Sequence[float] | None = None
    merged_adapter: int | None = None

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @property
    def max_positions(self) -> int:
        return int(self.config.max_position_embeddings)

    @property
    def adapter_names(self) -> tuple[str, ...]:
        return ()

    def encode(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attn: Attention, adapters: torch.Tensor | None
    ) -> torch.Tensor:
        """input_ids, position_ids [B, T] or [N] -> token states [B, T, H] or [N, H].

        `attn` is the attention for that layout; `adapters` what `select` made of the adapter ids.
        """
        raise NotImplementedError

    def select(self, adapter_ids: torch.Tensor | None, rows: int) -> torch.Tensor | None:
        """Check adapter_ids [B] (-1 = base weights) and turn them into what `encode` takes per row.

        A model without adapters accepts none but -1. The ids belong on the host: reading them there
        never waits for the device.
        """
        if adapter_ids is None:
            return None
        if adapter_ids.shape != (rows,):
            raise ValueError(f"adapter_ids has shape {tuple(adapter_ids.shape)}, expected ({rows},)")
        if bool((adapter_ids != -1).any()):
            raise ValueError("adapter_ids must all be -1: this model has no adapters")
        return None

    def merge_adapter(self, index: int) -> None:
        """Fold adapter `index` into the weights, for models with `adapter_names` (jina_v3 overrides this)."""
        raise ValueError(f"no adapter {index}: this model has no adapters")

    def forward(self, batch: TokenBatch, *, packed: bool | None = None) -> torch.Tensor:
        """batch -> packed token states [N, H]; `packed` None: the packed form on CUDA, padded elsewhere."""
        if packed is None:
            packed = batch.device.type == "cuda"
        return self.forward_packed(batch) if packed else padded_states(self, batch)

    def forward_padded(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        adapter_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """input_ids [B, T], attention_mask [B, T] bool, position_ids [B, T], adapter_ids [B] -> [B, T, H]."""
        adapters = self.select(adapter_ids, input_ids.shape[0])
        attn = PaddedAttention(attention_mask.bool(), causal=self.causal, alibi=self.alibi)
        return self.encode(input_ids, position_ids, attn, adapters)

    def forward_packed(self, batch: TokenBatch) -> torch.Tensor:
        """The batch's N real tokens only -> [N, H]; attention by the varlen kernel where it serves."""
        adapters = self.select(batch.adapter_ids, batch.size)
        attn = PackedAttention(
            batch.cu_seqlens, batch.max_length, tokens=batch.tokens, causal=self.causal, alibi=self.alibi
        )
        return self.encode(batch.input_ids, batch.position_ids, attn, adapters)

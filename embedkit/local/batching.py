"""Token batches: the one batch type the local runtime, the server's batcher and every model share.

Shaped like TEI's backend batch (backends/core/src/lib.rs `Batch`): the real tokens of every row
back to back, with cumulative sequence lengths marking where each row starts, so a packed forward
spends nothing on padding. `TokenBatch.padded()` gives the [B, T] view for backends that want it
(CPU attention, ONNX Runtime). Position ids and masks are built here, once, not inside each model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

__all__ = [
    "CPU_BATCH_TOKENS",
    "DEFAULT_BATCH_TOKENS",
    "DEFAULT_CPU_BATCH_TOKENS",
    "DEFAULT_MAX_BATCH_SIZE",
    "PaddedBatch",
    "TokenBatch",
    "cpu_batch_tokens",
    "pack",
    "token_budget_batches",
]

DEFAULT_BATCH_TOKENS = 16384  # padded tokens per forward pass on a GPU; bounds activation memory
# on CPU smaller passes stay in cache: all-MiniLM-L6-v2 over 256 mixed texts took 6.7 s at 2048 padded
# tokens, 7.6 s at 4096 and 9.3 s at 16384 (sentence-transformers, batch 32: 8.1 s)
DEFAULT_CPU_BATCH_TOKENS = 2048
# ONNX Runtime wants smaller passes still: its fp32 and int8 matmuls ran fastest at 1024 padded tokens
# (all-MiniLM-L6-v2, 1024 mixed texts; 2048 was 5-10% slower, 16384 up to 1.5x slower; benchmarks/RESULTS.md)
CPU_BATCH_TOKENS = {("torch", None): DEFAULT_CPU_BATCH_TOKENS, ("onnx", None): 1024, ("onnx", "int8"): 1024}
DEFAULT_MAX_BATCH_SIZE = 256


def cpu_batch_tokens(backend: str, quantize: str | None = None) -> int:
    """The padded-token budget of one CPU forward pass for `backend` ("torch" or "onnx") and `quantize`."""
    return CPU_BATCH_TOKENS.get((backend, quantize), DEFAULT_CPU_BATCH_TOKENS)


@dataclass(frozen=True)
class PaddedBatch:
    """The [B, T] view of a TokenBatch: rows right-padded to the longest."""

    input_ids: torch.Tensor  # int64 [B, T], pad id past each row's end
    attention_mask: torch.Tensor  # bool [B, T], True on real tokens
    position_ids: torch.Tensor  # int64 [B, T], 0, 1, 2, ... within each row (0 on padding)


@dataclass(frozen=True)
class TokenBatch:
    """B rows of token ids, packed.

    Row i is `input_ids[cu_seqlens[i] : cu_seqlens[i + 1]]`. `lengths`, `indices`, `adapter_ids` and
    `prompt_lengths` stay on the host, so that reading them never waits for the device.
    """

    input_ids: torch.Tensor  # int64 [N], N = sum(lengths)
    position_ids: torch.Tensor  # int64 [N], each token's 0-based position in its row
    cu_seqlens: torch.Tensor  # int32 [B + 1], 0, len0, len0 + len1, ...
    max_length: int  # the longest row, T of the padded view
    lengths: tuple[int, ...]  # [B] tokens per row, host
    indices: tuple[int, ...]  # [B] each row's position in the caller's list
    adapter_ids: torch.Tensor | None = None  # int64 [B] host: LoRA adapter per row, -1 = base weights
    prompt_lengths: torch.Tensor | None = None  # int64 [B] host: leading prompt tokens left out of pooling
    pad_id: int = 0

    @classmethod
    def from_ids(
        cls,
        ids: Sequence[Sequence[int]],
        indices: Sequence[int] | None = None,
        *,
        adapter_ids: np.ndarray | Sequence[int] | None = None,
        prompt_lengths: np.ndarray | Sequence[int] | None = None,
        pad_id: int = 0,
    ) -> TokenBatch:
        """Pack rows of token ids (each non-empty); `indices` default to 0..B-1."""
        lengths = tuple(len(row) for row in ids)
        if not lengths or min(lengths) == 0:
            raise ValueError("a TokenBatch needs at least one row and no empty rows")
        flat = np.fromiter((token for row in ids for token in row), dtype=np.int64, count=sum(lengths))
        starts = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=starts[1:])
        positions = np.arange(len(flat), dtype=np.int64) - np.repeat(starts[:-1].astype(np.int64), lengths)
        return cls(
            input_ids=torch.from_numpy(flat),
            position_ids=torch.from_numpy(positions),
            cu_seqlens=torch.from_numpy(starts),
            max_length=max(lengths),
            lengths=lengths,
            indices=tuple(range(len(lengths))) if indices is None else tuple(int(i) for i in indices),
            adapter_ids=None if adapter_ids is None else torch.as_tensor(np.asarray(adapter_ids, dtype=np.int64)),
            prompt_lengths=None
            if prompt_lengths is None
            else torch.as_tensor(np.asarray(prompt_lengths, dtype=np.int64)),
            pad_id=pad_id,
        )

    @property
    def size(self) -> int:
        """B, the number of rows."""
        return len(self.lengths)

    @property
    def tokens(self) -> int:
        """N, the real tokens in the batch."""
        return int(self.input_ids.shape[0])

    @property
    def device(self) -> torch.device:
        return self.input_ids.device

    def token_rows(self) -> torch.Tensor:
        """int64 [N]: the row each token belongs to (on the batch's device)."""
        lengths = torch.tensor(self.lengths, device=self.device)
        return torch.repeat_interleave(torch.arange(self.size, device=self.device), lengths, output_size=self.tokens)

    def padded(self) -> PaddedBatch:
        """The [B, T] right-padded view, on the batch's device."""
        mask = torch.arange(self.max_length, device=self.device).unsqueeze(0) < torch.tensor(
            self.lengths, device=self.device
        ).unsqueeze(1)
        input_ids = torch.full(mask.shape, self.pad_id, dtype=torch.int64, device=self.device)
        input_ids[mask] = self.input_ids
        position_ids = torch.zeros(mask.shape, dtype=torch.int64, device=self.device)
        position_ids[mask] = self.position_ids
        return PaddedBatch(input_ids, mask, position_ids)

    def rows(self) -> list[list[int]]:
        """Each row's token ids as host lists (reads the device once when the batch is on a GPU)."""
        starts, flat = self.cu_seqlens.tolist(), self.input_ids.tolist()
        return [flat[starts[i] : starts[i + 1]] for i in range(self.size)]

    def split(self, batch_tokens: int, max_batch_size: int) -> list[TokenBatch]:
        """This batch cut into batches of at most `batch_tokens` padded tokens and `max_batch_size` rows,
        longest first (as `pack`); their `indices` stay this batch's (the caller's positions)."""
        parts = pack(
            self.rows(),
            batch_tokens=batch_tokens,
            max_batch_size=max_batch_size,
            adapter_ids=None if self.adapter_ids is None else self.adapter_ids.numpy(),
            prompt_lengths=None if self.prompt_lengths is None else self.prompt_lengths.numpy(),
            pad_id=self.pad_id,
        )
        return [replace(part, indices=tuple(self.indices[i] for i in part.indices)) for part in parts]

    def to(self, device: torch.device | str) -> TokenBatch:
        """The device tensors moved to `device` (host fields stay); from pinned memory on CUDA, without a sync."""
        device = torch.device(device)
        if device == self.device:
            return self

        def move(tensor: torch.Tensor) -> torch.Tensor:
            if device.type == "cuda":
                return tensor.pin_memory().to(device, non_blocking=True)
            return tensor.to(device)

        return TokenBatch(
            input_ids=move(self.input_ids),
            position_ids=move(self.position_ids),
            cu_seqlens=move(self.cu_seqlens),
            max_length=self.max_length,
            lengths=self.lengths,
            indices=self.indices,
            adapter_ids=self.adapter_ids,
            prompt_lengths=self.prompt_lengths,
            pad_id=self.pad_id,
        )


def token_budget_batches(lengths: Sequence[int], batch_tokens: int, max_batch_size: int) -> list[list[int]]:
    """Indices grouped longest first so that each group's padded size stays within `batch_tokens`."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        widest = lengths[current[0]] if current else lengths[index]
        if current and ((len(current) + 1) * widest > batch_tokens or len(current) >= max_batch_size):
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches


def pack(
    ids: Sequence[Sequence[int]],
    *,
    batch_tokens: int,
    max_batch_size: int,
    adapter_ids: np.ndarray | None = None,
    prompt_lengths: np.ndarray | None = None,
    pad_id: int = 0,
) -> list[TokenBatch]:
    """Rows of token ids -> TokenBatches of at most `batch_tokens` padded tokens, longest first;
    each batch's `indices` say where its rows were in `ids`."""
    lengths = [len(row) for row in ids]
    return [
        TokenBatch.from_ids(
            [ids[i] for i in group],
            group,
            adapter_ids=None if adapter_ids is None else adapter_ids[group],
            prompt_lengths=None if prompt_lengths is None else prompt_lengths[group],
            pad_id=pad_id,
        )
        for group in token_budget_batches(lengths, batch_tokens, max_batch_size)
    ]

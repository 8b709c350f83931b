"""Pooling token states into one vector per text, once for every family.

Modes and their order follow sentence-transformers' Pooling module: several enabled modes are
concatenated in the order the config lists them. `pool` takes padded states [B, T, H] (left or right
padding), `pool_packed` the packed states [N, H] of a `TokenBatch`; both give the same vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from embedkit.errors import ModelLoadError

if TYPE_CHECKING:
    from embedkit.local.batching import TokenBatch

__all__ = ["POOLING_MODES", "check_modes", "pool", "pool_packed"]

POOLING_MODES = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def check_modes(modes: Sequence[str], source: str) -> tuple[str, ...]:
    """Validate pooling mode names read from `source`."""
    if not modes:
        raise ModelLoadError(f"{source}: no pooling mode is enabled")
    unknown = [mode for mode in modes if mode not in POOLING_MODES]
    if unknown:
        raise ModelLoadError(f"{source}: unknown pooling mode(s) {unknown}; known: {', '.join(POOLING_MODES)}")
    return tuple(modes)


def _exclude_prompt(mask: torch.Tensor, prompt_length: int | torch.Tensor) -> torch.Tensor:
    # first real token of each row: 0 under right padding, the pad count under left padding
    first = mask.to(torch.int32).argmax(dim=1, keepdim=True)
    positions = torch.arange(mask.shape[1], device=mask.device).unsqueeze(0)
    if isinstance(prompt_length, torch.Tensor):
        prompt_length = prompt_length.to(mask.device).view(-1, 1)
    return mask & (positions >= first + prompt_length)


def pool(
    hidden: torch.Tensor, mask: torch.Tensor, modes: Sequence[str], *, prompt_length: int | torch.Tensor = 0
) -> torch.Tensor:
    """hidden [B, T, H], mask [B, T] bool (True = real token) -> [B, H * len(modes)] float32.

    `prompt_length` (one int, or [B] per row) drops that many leading tokens of each text from
    pooling (the sentence-transformers `include_prompt: false` setting).
    """
    hidden = hidden.float()
    last_index = mask.shape[1] - 1 - mask.flip(1).to(torch.int32).argmax(dim=1)  # [B]
    if isinstance(prompt_length, torch.Tensor) or prompt_length:
        mask = _exclude_prompt(mask, prompt_length)
    weights = mask.unsqueeze(-1).float()  # [B, T, 1]
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    counts = weights.sum(dim=1).clamp(min=1e-9)  # [B, 1]
    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append(hidden[rows, mask.to(torch.int32).argmax(dim=1)])
        elif mode == "max":
            outputs.append(hidden.masked_fill(~mask.unsqueeze(-1), float("-inf")).max(dim=1).values)
        elif mode == "mean":
            outputs.append((hidden * weights).sum(dim=1) / counts)
        elif mode == "mean_sqrt_len_tokens":
            outputs.append((hidden * weights).sum(dim=1) / counts.sqrt())
        elif mode == "weightedmean":
            # position weights 1, 2, ... counted from each row's first real token
            first = mask.to(torch.int32).argmax(dim=1, keepdim=True)
            ranks = torch.arange(1, mask.shape[1] + 1, device=hidden.device).unsqueeze(0) - first
            positional = weights * ranks.unsqueeze(-1).float()
            outputs.append((hidden * positional).sum(dim=1) / positional.sum(dim=1).clamp(min=1e-9))
        elif mode == "lasttoken":
            outputs.append(hidden[rows, last_index])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(outputs, dim=-1)


def pool_packed(hidden: torch.Tensor, batch: TokenBatch, modes: Sequence[str]) -> torch.Tensor:
    """hidden [N, H], packed as `batch` -> [B, H * len(modes)] float32, as `pool` gives over the padded view.

    `batch.prompt_lengths` [B] (host; None = 0) drops that many leading tokens of each row from
    pooling; `lasttoken` still reads the row's last token. Segment sums over the token axis, with
    index tensors only: nothing waits on the device.
    """
    hidden = hidden.float()
    device, B = hidden.device, batch.size
    rows = batch.token_rows()  # [N]
    starts = batch.cu_seqlens.to(device=device, dtype=torch.long)  # [B + 1]
    positions = torch.arange(hidden.shape[0], device=device) - starts[:-1][rows]  # [N], 0-based in the row
    skip = torch.zeros(B, dtype=torch.long, device=device)
    if batch.prompt_lengths is not None:
        skip = batch.prompt_lengths.to(device=device, dtype=torch.long, non_blocking=True)
    lengths = starts[1:] - starts[:-1]  # [B]
    # a row whose prompt covers it all pools nothing, and reads its first token for `cls`, as `pool`
    first = torch.where(skip < lengths, skip, 0)  # [B]
    keep = positions >= skip[rows]  # [N]
    weights = keep.float().unsqueeze(-1)  # [N, 1]
    counts = torch.zeros(B, 1, device=device).index_add_(0, rows, weights).clamp(min=1e-9)  # [B, 1]

    def row_sum(values: torch.Tensor) -> torch.Tensor:
        return torch.zeros(B, values.shape[-1], device=device).index_add_(0, rows, values)

    outputs = []
    for mode in modes:
        if mode == "cls":
            outputs.append(hidden[starts[:-1] + first])
        elif mode == "max":
            dropped = hidden.masked_fill(~keep.unsqueeze(-1), float("-inf"))
            init = torch.full((B, hidden.shape[1]), float("-inf"), device=device)
            outputs.append(init.scatter_reduce_(0, rows[:, None].expand_as(dropped), dropped, "amax"))
        elif mode == "mean":
            outputs.append(row_sum(hidden * weights) / counts)
        elif mode == "mean_sqrt_len_tokens":
            outputs.append(row_sum(hidden * weights) / counts.sqrt())
        elif mode == "weightedmean":
            # position weights 1, 2, ... counted from each row's first pooled token
            positional = weights * (positions - first[rows] + 1).float().unsqueeze(-1)
            outputs.append(row_sum(hidden * positional) / row_sum(positional).clamp(min=1e-9))
        elif mode == "lasttoken":
            outputs.append(hidden[starts[1:] - 1])
        else:
            raise ValueError(f"unknown pooling mode {mode!r}")
    return torch.cat(outputs, dim=-1)

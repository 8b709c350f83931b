"""Pooling modes against hand computations; last-token pooling under left and right padding."""

from __future__ import annotations

import torch

from embedkit.models.pooling import pool


def test_modes_match_hand_computation() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = pool(hidden, mask, ("cls", "mean", "max", "lasttoken"))
    first = hidden[0, :3]
    expected0 = torch.cat([first[0], first.mean(0), first.max(0).values, first[2]])
    torch.testing.assert_close(out[0], expected0)
    torch.testing.assert_close(out[1, 3:6], hidden[1].mean(0))


def test_last_token_same_under_left_and_right_padding() -> None:
    torch.manual_seed(1)
    tokens = torch.randn(4, 8)
    right = torch.zeros(1, 6, 8)
    right[0, :4] = tokens
    left = torch.zeros(1, 6, 8)
    left[0, 2:] = tokens
    right_mask = torch.tensor([[1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    left_mask = torch.tensor([[0, 0, 1, 1, 1, 1]], dtype=torch.bool)
    for modes in (("lasttoken",), ("mean",), ("weightedmean",)):
        torch.testing.assert_close(pool(right, right_mask, modes), pool(left, left_mask, modes))
    torch.testing.assert_close(pool(right, right_mask, ("lasttoken",))[0], tokens[3])


def test_prompt_tokens_excluded_from_mean() -> None:
    hidden = torch.arange(12, dtype=torch.float32).view(1, 4, 3)
    mask = torch.ones(1, 4, dtype=torch.bool)
    torch.testing.assert_close(pool(hidden, mask, ("mean",), prompt_length=2)[0], hidden[0, 2:].mean(0))

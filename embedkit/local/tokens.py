"""Texts and token-id lists -> the ids a model runs: prompts, lower-casing, truncation, id checks.

`Encoder` wraps the model's tokenizer (never padding, truncating copies made per limit) and is what
`LocalEmbedder.encode`, `embed`, `embed_ids` and late chunking tokenise through.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from tokenizers import Tokenizer

from embedkit.errors import InputError
from embedkit.local.tokenizer import plain_copy
from embedkit.tasks import TaskTable

__all__ = ["Encoder", "TextPlan", "plan_tasks"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPlan:
    """Per text: the prompt to prepend, the adapter to run, the prompt tokens pooling skips."""

    prefixes: list[str]
    adapter_ids: np.ndarray | None  # int64 [N], None when the model has no adapters in play
    prompt_lengths: np.ndarray | None  # int64 [N], None when every text pools its prompt too


class Encoder:
    """The model's tokenizer, used without padding; truncation only where a caller asks for it."""

    def __init__(self, tokenizer: Tokenizer, *, max_length: int, lower_case: bool, include_prompt: bool) -> None:
        self.pad_id = tokenizer.padding["pad_id"] if tokenizer.padding else 0
        self.tokenizer = plain_copy(tokenizer)
        self.max_length = max_length  # the model's input limit
        self.lower_case = lower_case  # sentence-transformers' do_lower_case
        self.include_prompt = include_prompt
        self.truncated_count = 0  # inputs cut over this encoder's life
        self._truncating_copies: dict[tuple[int, str], Tokenizer] = {}

    @cached_property
    def vocabulary_size(self) -> int:
        return max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1

    @cached_property
    def special_token_count(self) -> int:
        processor = self.tokenizer.post_processor
        return processor.num_special_tokens_to_add(False) if processor is not None else 0

    def truncating(self, max_length: int, direction: str) -> Tokenizer:
        """A copy of the tokenizer truncating at `max_length` from `direction` (a server uses one or two)."""
        key = (max_length, direction)
        if key not in self._truncating_copies:
            tokenizer = plain_copy(self.tokenizer)
            tokenizer.enable_truncation(max_length, direction=direction)
            self._truncating_copies[key] = tokenizer
        return self._truncating_copies[key]

    def prompt_length(self, prefix: str) -> int:
        """Leading tokens of `prefix` that pooling leaves out (0 when the prompt is pooled too)."""
        # sentence-transformers' include_prompt=False: drop the prompt's tokens (with the leading
        # special token, without a trailing one) from pooling
        if self.include_prompt or not prefix:
            return 0
        ids = self.tokenizer.encode(prefix).ids
        special = {i for i, token in self.tokenizer.get_added_tokens_decoder().items() if token.special}
        return len(ids) - (1 if ids and ids[-1] in special else 0)

    def overhead(self, prefix: str) -> int:
        """Tokens a text costs beyond its own: special tokens plus `prefix`."""
        with_everything = len(self.tokenizer.encode(prefix + "x").ids)
        return with_everything - len(self.tokenizer.encode("x", add_special_tokens=False).ids)

    def check_ids(self, ids: object, index: int) -> list[int]:
        """`ids` as a list of ints, or InputError naming `inputs[index]` (and the position of a bad id)."""
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)):
            raise InputError(
                f"inputs[{index}] is {type(ids).__name__}, expected a str or a list of token ids", index=index
            )
        values = ids.tolist() if isinstance(ids, np.ndarray) else list(ids)
        if not values:
            raise InputError(f"inputs[{index}] is an empty list of token ids", index=index)
        vocabulary = self.vocabulary_size
        for position, value in enumerate(values):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise InputError(
                    f"inputs[{index}][{position}] is {type(value).__name__}, expected an int token id", index=index
                )
            if not 0 <= value < vocabulary:
                raise InputError(
                    f"inputs[{index}][{position}]: token id {int(value)} is outside this model's vocabulary "
                    f"(ids 0..{vocabulary - 1})",
                    index=index,
                )
        return [int(value) for value in values]

    def check_id_lists(self, ids: object) -> list[list[int]]:
        if isinstance(ids, (str, bytes)) or not isinstance(ids, (Sequence, np.ndarray)) or len(ids) == 0:
            raise InputError("ids must be a non-empty list of token-id lists")
        return [self.check_ids(row, index) for index, row in enumerate(ids)]

    def encode(
        self,
        items: Sequence[str | list[int]],
        prefixes: Sequence[str],
        *,
        max_length: int | None,
        direction: str,
        name: str,
    ) -> list[list[int]]:
        """Checked items (texts, id lists) -> the ids the model runs, cut to `max_length` (None: never);
        `name` is what messages call the caller's list."""
        if not isinstance(direction, str) or direction.lower() not in ("right", "left"):
            raise InputError(f"truncation_direction={direction!r}; use 'right' or 'left'")
        direction = direction.lower()
        specials = self.special_token_count
        if max_length is not None and (
            isinstance(max_length, bool)
            or not isinstance(max_length, int)
            or not specials < max_length <= self.max_length
        ):
            raise InputError(
                f"max_length={max_length!r}: expected an int from {specials + 1} to this model's limit of "
                f"{self.max_length}"
            )
        texts: dict[int, str] = {}
        out: list[list[int]] = [[] for _ in items]
        cut: list[int] = []
        for index, (prefix, item) in enumerate(zip(prefixes, items, strict=True)):
            if isinstance(item, str):
                texts[index] = prefix + item
            elif prefix:
                # TEI (core/src/tokenization.rs): behind a prompt, token ids are decoded without their
                # special tokens and tokenized again as text
                texts[index] = prefix + self.tokenizer.decode(item, skip_special_tokens=True)
            elif max_length is not None and len(item) > max_length:
                # as TEI cuts raw ids: tokenized again without special tokens and truncated, so a
                # trailing [SEP] goes too
                out[index] = item[:max_length] if direction == "right" else item[-max_length:]
                cut.append(index)
            else:
                out[index] = item
        if self.lower_case:
            texts = {index: text.lower() for index, text in texts.items()}
        # the tokenizer's own truncation cuts a text's tokens and keeps the special tokens
        tokenizer = self.tokenizer if max_length is None else self.truncating(max_length, direction)
        for index, encoding in zip(texts, tokenizer.encode_batch(list(texts.values())), strict=True):
            out[index] = encoding.ids
            if encoding.overflowing:
                cut.append(index)
        if cut:
            self.truncated_count += len(cut)
            shown = ", ".join(str(i) for i in sorted(cut)[:10]) + (" ..." if len(cut) > 10 else "")
            log.warning(
                "%d of %d %s were truncated to %d tokens (indices %s)", len(cut), len(out), name, max_length, shown
            )
        return out

    def check_lengths(self, ids: Sequence[Sequence[int]], name: str) -> None:
        """InputError naming the first row longer than the model's limit."""
        for index, row in enumerate(ids):
            if len(row) > self.max_length:
                raise InputError(
                    f"{name}[{index}] is {len(row)} tokens long, over this model's limit of "
                    f"{self.max_length}; shorten it or pass truncate=True",
                    index=index,
                )


def plan_tasks(
    task: str | Sequence[str | None] | None,
    count: int,
    table: TaskTable,
    encoder: Encoder,
    *,
    default_task: str | None,
    merged: str | None,
) -> TextPlan:
    """The TextPlan of `count` texts under `task` (one name, or one per text; None = `default_task`).

    InputError for a malformed `task`, or for a task needing another adapter than the `merged` one;
    UnknownTaskError (listing the valid ones) for a task the model does not know.
    """
    if task is None or isinstance(task, str):
        tasks: list[str | None] = [task] * count
    elif isinstance(task, Sequence):
        tasks = list(task)
        if len(tasks) != count:
            raise InputError(f"task has {len(tasks)} entries for {count} texts; give one per text or one name")
        for index, name in enumerate(tasks):
            if name is not None and not isinstance(name, str):
                raise InputError(f"task[{index}] must be a task name or None, got {type(name).__name__}")
    else:
        raise InputError(f"task must be a task name, a list of them or None, got {type(task).__name__}")
    per_task: dict[str | None, tuple[str, int, int]] = {}
    for name in dict.fromkeys(tasks):
        chosen = default_task if name is None else name
        prefix, adapter = table.prefix(chosen), table.adapter(chosen)
        if merged is not None and adapter != list(table.adapters).index(merged):
            raise InputError(
                f"task={chosen!r} needs a different adapter than {merged!r}, which this embedder has merged "
                "into its weights (merge_lora=True); load the model again without merge_lora to mix tasks"
            )
        per_task[name] = (prefix, adapter, encoder.prompt_length(prefix))
    prefixes = [per_task[name][0] for name in tasks]
    adapter_ids = np.array([per_task[name][1] for name in tasks], dtype=np.int64)
    prompt_lengths = np.array([per_task[name][2] for name in tasks], dtype=np.int64)
    in_play = bool(table.adapters) and merged is None
    return TextPlan(prefixes, adapter_ids if in_play else None, prompt_lengths if prompt_lengths.any() else None)

"""A request's inputs, checked against the server's limits and tokenised ONCE.

Everything here runs before a request reaches the model: emptiness and batch size (TEI's order),
encodability, prompt names, Matryoshka dimensions, TEI's characters-per-token pre-check, and then the
one tokenisation (`InputPolicy.token_ids`), whose ids, cut to `max_input_length` or refused past it,
are exactly what the dynamic batcher packs and the model runs. Nothing downstream tokenises again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from embedkit.embedder import check_dimensions, check_encodable
from embedkit.errors import InputError
from embedkit.local.embedder import LocalEmbedder
from embedkit.server.errors import ApiError, validation_error
from embedkit.server.settings import ServerSettings

__all__ = ["CHARS_PER_TOKEN_LIMIT", "InputPolicy", "Item"]

log = logging.getLogger(__name__)

CHARS_PER_TOKEN_LIMIT = 250  # TEI refuses (or cuts) inputs over 250 characters per allowed token

Item = str | list[int]  # one input: a text, or the model's token ids (special tokens included, as TEI takes them)


class InputPolicy:
    """The input limits of one server over `embedder`.

    Raises InputError when `settings.max_input_length` leaves no room for a token beyond the special ones.
    """

    def __init__(self, embedder: LocalEmbedder, settings: ServerSettings) -> None:
        self.embedder = embedder
        self.max_client_batch_size = settings.max_client_batch_size
        limit = embedder.max_input_tokens
        self.max_input_length = min(settings.max_input_length or limit, limit)  # tokens per input, as run
        if settings.max_input_length and settings.max_input_length > limit:
            log.warning(
                "--max-input-length %d is past the model's limit of %d tokens; using %d",
                settings.max_input_length,
                limit,
                self.max_input_length,
            )
        overhead = embedder.input_overhead()
        if self.max_input_length <= overhead:
            raise InputError(
                f"max_input_length={self.max_input_length} leaves no room for text: the model adds {overhead} "
                "special tokens to every input"
            )

    def items(self, inputs: str | list[Any]) -> list[Item]:
        """TEI's untagged `Input` -> one item per input; ApiError for an empty or too large batch."""
        if isinstance(inputs, str) or (inputs and all(isinstance(value, int) for value in inputs)):
            items: list[Item] = [inputs]  # a single text, or ONE token-id input
        else:
            items = list(inputs)
        if not items or any(len(item) == 0 for item in items):
            raise ApiError("Empty", "Input validation error: `inputs` cannot be empty")
        if len(items) > self.max_client_batch_size:
            raise validation_error(f"batch size {len(items)} > maximum allowed batch size {self.max_client_batch_size}")
        for index, item in enumerate(items):
            if isinstance(item, str):
                check_encodable(item, f"inputs[{index}]", index=index)  # a lone surrogate: InputError, 422
        return items

    def task(self, prompt_name: str | None) -> str | None:
        """`prompt_name` if the model has that prompt or task (None: the default), else a 422 listing them."""
        if prompt_name is not None and prompt_name not in self.embedder.tasks:
            raise validation_error(
                f"Input validation error: prompt_name {prompt_name!r} was not found in the model's prompts "
                f"and tasks. Available prompts: {self.embedder.tasks}"
            )
        return prompt_name

    def check_dimensions(self, dimensions: int | None) -> None:
        """A 422 unless `dimensions` is None or a size this model's vectors can be cut to."""
        if dimensions is None:
            return
        if dimensions <= 0:
            raise validation_error("Input validation error: `dimensions` should be positive")
        try:
            check_dimensions(dimensions, self.embedder.dimension, self.embedder.matryoshka_dimensions)
        except InputError as exc:
            raise validation_error(f"Input validation error: {exc}") from None

    def check_characters(self, items: Sequence[Item], truncate: bool, direction: str) -> list[Item]:
        """TEI's character pre-check: a text over 250 characters per allowed token is refused, or cut.

        Bounds the tokenizer's work by the input limit before tokenising; counts characters, not tokens."""
        limit = self.max_input_length * CHARS_PER_TOKEN_LIMIT
        out = list(items)
        for index, item in enumerate(items):
            if isinstance(item, str) and len(item) > limit:
                if not truncate:
                    raise validation_error(
                        f"Input validation error: `inputs` must have less than {limit} characters. "
                        f"Given: {len(item)} (inputs[{index}])"
                    )
                out[index] = item[:limit] if direction == "right" else item[-limit:]
        return out

    def token_ids(self, items: list[Item], task: str | None, truncate: bool, direction: str) -> list[list[int]]:
        """The one tokenisation: what the model runs for each item (prompt and special tokens included), cut
        to max_input_length, or a 422 past it without truncation. CPU-bound: call it from a worker thread."""
        items = self.check_characters(items, truncate, direction)
        ids = self.embedder.encode(
            items, task=task, max_length=self.max_input_length if truncate else None, truncation_direction=direction
        )
        for index, row in enumerate(ids):
            if len(row) > self.max_input_length:  # only without truncation: the length check reads these ids
                raise validation_error(
                    f"Input validation error: `inputs` must have less than {self.max_input_length} tokens. "
                    f"Given: {len(row)} (inputs[{index}])"
                )
        return ids

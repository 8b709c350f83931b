"""Late chunking: one pass over a whole document, then one mean-pooled vector per character span.

The model reads the document (with its task's prompt); a span's vector is the mean of the states of
the tokens inside it, so each chunk's vector carries the surrounding context. Past the model's
input limit the document is read in windows overlapping by a quarter, each token keeping its state
from the window where it has the most context on its thinner side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from tokenizers import Encoding

from embedkit.embedder import check_encodable
from embedkit.errors import InputError
from embedkit.local.tokens import Encoder

__all__ = ["Window", "check_request", "span_vectors"]

# one forward pass over a row of token ids -> its token states, float32 [len(row), H]
Window = Callable[[list[int]], np.ndarray]


def check_request(text: object, pooling: Sequence[str]) -> None:
    """InputError unless the model mean-pools and `text` is a non-blank, encodable str."""
    if tuple(pooling) != ("mean",):
        raise InputError(
            f"late chunking mean-pools token states; this model pools with {'+'.join(pooling)}, "
            "for which pooling a span of a longer text means nothing. Embed the chunks on their own."
        )
    if not isinstance(text, str) or not text.strip():
        raise InputError("text must be a non-blank str")
    check_encodable(text, "text")


def span_vectors(encoder: Encoder, run: Window, text: str, prefix: str, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """float32 [len(spans), H]: raw (unnormalised) span vectors of `text` read behind `prefix`.

    InputError when lower-casing moves characters (spans could not be mapped), when the text has no
    tokens, when the prompt leaves no room within the model's limit, or for a span covering no token.
    """
    full = prefix + text
    if encoder.lower_case:
        full = full.lower()
        if len(full) != len(prefix) + len(text):
            raise InputError("late chunking cannot map spans through this text's lower-casing")
    encoding = encoder.tokenizer.encode(full)
    content = content_tokens(encoding, len(prefix))
    if not content:
        raise InputError("text has no tokens to pool")
    ids = encoding.ids
    leading, trailing = ids[: content[0]], ids[content[-1] + 1 :]
    room = encoder.max_length - len(leading) - len(trailing)
    if room < 2:
        raise InputError(f"the prompt leaves no room for text within {encoder.max_length} tokens")
    states = token_states(run, ids[content[0] : content[-1] + 1], leading, trailing, room)
    token_spans = np.array([encoding.offsets[i] for i in content]) - len(prefix)
    return pool_spans(states, token_spans, spans)


def content_tokens(encoding: Encoding, prefix_chars: int) -> list[int]:
    """Positions in `encoding` of the document's own tokens: not special, ending past the prompt."""
    pairs = zip(encoding.special_tokens_mask, encoding.offsets, strict=True)
    return [i for i, (special, (_, end)) in enumerate(pairs) if not special and end > prefix_chars]


def token_states(run: Window, content: list[int], leading: list[int], trailing: list[int], room: int) -> np.ndarray:
    """float32 [len(content), H]: each content token's state, read in windows of `room` content tokens
    (between the `leading` and `trailing` ids: prompt and special tokens) overlapping by a quarter."""
    stride = room if len(content) <= room else max(1, room - room // 4)
    states: np.ndarray | None = None
    margin = np.full(len(content), -1)
    start = 0
    while True:
        stop = min(start + room, len(content))
        hidden = run(leading + content[start:stop] + trailing)[len(leading) : len(leading) + stop - start]
        if states is None:
            states = np.empty((len(content), hidden.shape[1]), dtype=np.float32)
        # context on the thinner side; a window edge at the document's own edge cuts nothing
        positions = np.arange(start, stop)
        left = positions - start if start > 0 else np.full(stop - start, len(content))
        right = stop - 1 - positions if stop < len(content) else np.full(stop - start, len(content))
        here = np.minimum(left, right)
        better = here > margin[start:stop]
        states[start:stop][better] = hidden[better]
        margin[start:stop][better] = here[better]
        if stop == len(content):
            return states
        start += stride


def pool_spans(states: np.ndarray, token_spans: np.ndarray, spans: Sequence[tuple[int, int]]) -> np.ndarray:
    """float32 [len(spans), H]: the mean state of the tokens overlapping each character span.

    `token_spans` is int [len(states), 2], each token's character offsets in the document; InputError
    for a span that covers no token.
    """
    vectors = np.empty((len(spans), states.shape[1]), dtype=np.float32)
    for index, (start, end) in enumerate(spans):
        inside = (token_spans[:, 0] < end) & (token_spans[:, 1] > start)
        if not inside.any():
            raise InputError(f"spans[{index}] = ({start}, {end}) covers no token of the text")
        vectors[index] = states[inside].mean(axis=0)
    return vectors

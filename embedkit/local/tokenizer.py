"""Finding and loading a model's fast tokenizer: the one loader `embedkit.load` and the Chunker share.

Imports neither torch nor transformers at module level (chunking, and so `import embedkit`, reads
it); transformers is imported only when a model folder's tokenizer is built.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from embedkit.errors import InputError, ModelLoadError

__all__ = ["TOKENIZER_FILES", "as_tokenizer", "load_model_tokenizer", "load_tokenizer", "plain_copy", "tokenizer_files"]

# the files AutoTokenizer builds a vocabulary from, in the order it prefers them; without any of them
# transformers still gives a tokenizer, of the special tokens alone, that turns every word into [UNK]
TOKENIZER_FILES: tuple[tuple[str, ...], ...] = (
    ("tokenizer.json",),
    ("vocab.txt",),  # BERT WordPiece
    ("vocab.json", "merges.txt"),  # byte-level BPE (RoBERTa, GPT-2, Qwen): useless without the merges
    ("sentencepiece.bpe.model",),  # XLM-RoBERTa
    ("spiece.model",),  # T5, ALBERT
    ("spm.model",),  # DeBERTa-v2
    ("tokenizer.model",),  # Llama, Mistral, Gemma
)


def tokenizer_files(model_dir: Path) -> list[Path]:
    """The vocabulary files present in `model_dir`, most preferred first (see TOKENIZER_FILES)."""
    return [model_dir / names[0] for names in TOKENIZER_FILES if all((model_dir / name).is_file() for name in names)]


def plain_copy(tokenizer: Tokenizer) -> Tokenizer:
    """A private copy that neither pads nor truncates: counts and offsets are then the text's own."""
    copy = Tokenizer.from_str(tokenizer.to_str())
    copy.no_padding()
    copy.no_truncation()
    return copy


def load_model_tokenizer(model_dir: Path) -> tuple[Tokenizer, Path]:
    """The fast tokenizer of the model in `model_dir` as sentence-transformers builds it (transformers'
    AutoTokenizer, then its tokenizers backend), and the file its vocabulary comes from.

    Raises ModelLoadError when `model_dir` holds no vocabulary file (listing the names looked for), or
    when transformers cannot build a fast tokenizer from it (naming the file).
    """
    found = tokenizer_files(model_dir)
    if not found:
        looked_for = ", ".join(" + ".join(names) for names in TOKENIZER_FILES)
        raise ModelLoadError(
            f"{model_dir}: no tokenizer files (looked for {looked_for}); copy the tokenizer files that were "
            "published with these weights into the folder"
        )
    from transformers import AutoTokenizer

    try:
        with warnings.catch_warnings():
            # transformers reads config.json on the way and warns about fields it has renamed since
            # (GTE's `rope_scaling`); they are the model's business, not the tokenizer's
            warnings.simplefilter("ignore", FutureWarning)
            hf_tokenizer = AutoTokenizer.from_pretrained(str(model_dir), trust_remote_code=False)
    except (OSError, ValueError, KeyError) as exc:  # a corrupt tokenizer.json is a ValueError (JSONDecodeError)
        raise ModelLoadError(f"{found[0]}: cannot load the tokenizer ({exc})") from exc
    backend = as_tokenizer(hf_tokenizer)
    if backend is None:
        raise ModelLoadError(f"{model_dir}: the tokenizer has no fast (tokenizers) backend")
    # a private copy: callers change its truncation settings
    return Tokenizer.from_str(backend.to_str()), found[0]


def as_tokenizer(obj: object) -> Tokenizer | None:
    """A tokenizers.Tokenizer for `obj`: itself, or a transformers fast tokenizer's backend; else None."""
    if isinstance(obj, Tokenizer):
        return obj
    # transformers' fast tokenizers are recognised by what they hold, without importing transformers
    # (seconds) to name their class: a third-party type, not one of embedkit's interfaces
    backend = getattr(type(obj), "backend_tokenizer", None) and getattr(obj, "backend_tokenizer", None)
    return backend if isinstance(backend, Tokenizer) else None


def load_tokenizer(source: Any) -> Tokenizer:
    """A tokenizers.Tokenizer from one, from a transformers fast tokenizer, from a tokenizer.json path, or
    from a model folder (read as `load_model_tokenizer` reads it).

    InputError for a path that does not exist, a folder without tokenizer files, or another type;
    ModelLoadError for a file that is not a tokenizer.
    """
    found = as_tokenizer(source)
    if found is not None:
        return found
    if not isinstance(source, (str, os.PathLike)):
        raise InputError(
            "tokenizer must be a tokenizers.Tokenizer, a transformers fast tokenizer, or the path of a "
            f"tokenizer.json or of a model folder holding one; got {type(source).__name__}"
        )
    path = Path(source).expanduser()
    if path.is_dir():
        if not tokenizer_files(path):
            raise InputError(f"{path} holds no tokenizer.json; give the file itself or the model's folder")
        return load_model_tokenizer(path)[0]
    if not path.is_file():
        raise InputError(f"tokenizer {str(source)!r} does not exist: give a tokenizer.json or a model folder")
    try:
        return Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for a file it cannot parse
        raise ModelLoadError(f"{path} is not a tokenizers tokenizer.json: {error}") from None

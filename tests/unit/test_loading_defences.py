"""Damaged or mismatched model files are clear errors naming the file; nothing runs code from a checkpoint."""

from __future__ import annotations

import json
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import embedkit
from embedkit.errors import ModelLoadError

from ..conftest import write_tiny_bert


@pytest.fixture()
def model_dir(tmp_path: Path, tiny_bert_dir: Path) -> Path:
    target = tmp_path / "model"
    shutil.copytree(tiny_bert_dir, target)
    return target


def rewrite(model_dir: Path, change) -> None:
    path = model_dir / "model.safetensors"
    state = load_file(str(path))
    change(state)
    save_file(state, str(path), metadata={"format": "pt"})


def test_truncated_and_corrupted_safetensors(model_dir: Path) -> None:
    path = model_dir / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"model\.safetensors"):
        embedkit.load(model_dir)
    path.write_bytes(b"\xff" * 8 + data[8:])  # an absurd header length
    with pytest.raises(ModelLoadError, match="implausible"):
        embedkit.load(model_dir)
    path.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        embedkit.load(model_dir)


def test_nan_or_inf_weights(model_dir: Path) -> None:
    def poison(state: dict) -> None:
        name = next(n for n in state if n.endswith("query.weight"))
        state[name][0, 0] = float("nan")

    rewrite(model_dir, poison)
    with pytest.raises(ModelLoadError, match=r"model\.safetensors: tensor '.*query\.weight' holds NaN or Inf"):
        embedkit.load(model_dir)


def test_missing_tensor_and_wrong_shape(model_dir: Path) -> None:
    original = load_file(str(model_dir / "model.safetensors"))
    rewrite(model_dir, lambda state: state.pop(next(n for n in state if n.endswith("intermediate.dense.weight"))))
    with pytest.raises(ModelLoadError, match=r"intermediate.dense.weight"):
        embedkit.load(model_dir)
    save_file(original, str(model_dir / "model.safetensors"), metadata={"format": "pt"})

    def reshape(state: dict) -> None:
        name = next(n for n in state if n.endswith("output.dense.bias"))
        state[name] = torch.zeros(state[name].shape[0] + 1)

    rewrite(model_dir, reshape)
    with pytest.raises(ModelLoadError, match=r"output\.dense\.bias"):
        embedkit.load(model_dir)


def test_tokenizer_that_does_not_match_the_vocabulary(tmp_path: Path, minilm_dir: Path) -> None:
    small = write_tiny_bert(tmp_path / "small-vocab", minilm_dir, vocab_size=1000)
    with pytest.raises(ModelLoadError, match="token ids up to 30521, but the model's embedding table has 1000 rows"):
        embedkit.load(small)


TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")


def test_a_folder_without_tokenizer_files_is_refused(tmp_path: Path, minilm_dir: Path) -> None:
    """transformers would build a 5-token tokenizer of special tokens: every word [UNK], every text one vector."""
    bare = tmp_path / "no-tokenizer"
    shutil.copytree(minilm_dir, bare, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    message = re.escape(f"{bare}: no tokenizer files (looked for tokenizer.json, vocab.txt, vocab.json + merges.txt, ")
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(bare, device="cpu")
    (bare / "vocab.json").write_text("{}")  # half of a BPE pair is not a tokenizer
    with pytest.raises(ModelLoadError, match="no tokenizer files"):
        embedkit.load(bare, device="cpu")
    shutil.copy(minilm_dir / "vocab.txt", bare / "vocab.txt")  # WordPiece from vocab.txt alone still loads
    assert embedkit.load(bare, device="cpu").tokenizer.get_vocab_size() == 30522


def test_a_much_smaller_foreign_tokenizer_is_refused(tmp_path: Path, minilm_dir: Path) -> None:
    """Another model's tokenizer.json (a 40-word vocabulary) over MiniLM's 30522-row table."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    foreign = tmp_path / "foreign-tokenizer"
    shutil.copytree(minilm_dir, foreign, ignore=shutil.ignore_patterns(*TOKENIZER_FILES))
    # with all of BERT's special tokens, so that transformers adds none (it would add a missing [MASK])
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(35)]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(words)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(foreign / "tokenizer.json"))
    message = re.escape(
        f"{foreign / 'tokenizer.json'}: the tokenizer has 40 tokens, but the model's embedding table has 30522 rows"
    )
    with pytest.raises(ModelLoadError, match=message):
        embedkit.load(foreign, device="cpu")


@pytest.mark.parametrize(
    ("tokens", "rows"),
    [
        (151646, 151936),  # gte-Qwen2: the table padded by 290 rows
        (30522, 30528),  # nomic-bert: padded to a multiple of 64
        (50295, 51200),  # phi-2: padded by 905 rows
        (300, 320),  # tests/models/test_qwen.py's trained BPE
        (10, 64),  # a tiny model whose table is padded to 64 rows
        (128, 256),  # exactly half
    ],
)
def test_padded_tables_pass(tokens: int, rows: int) -> None:
    from tokenizers import Tokenizer, models

    from embedkit.local.loader import check_vocabulary

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(tokens)}, unk_token="t0"))
    with torch.device("meta"):
        check_vocabulary(tokenizer, torch.nn.Embedding(rows, 1), Path("tokenizer.json"))


@pytest.mark.parametrize(
    ("tokens", "rows"),
    [
        (5, 30522),  # transformers' special-tokens-only BERT tokenizer over MiniLM's table
        (800, 250002),  # a tiny test tokenizer over XLM-RoBERTa's table
        (491, 151669),  # a tiny test tokenizer over Qwen3's table
        (100, 300),  # under half, and 200 rows short
    ],
)
def test_tables_far_past_the_vocabulary_are_refused(tokens: int, rows: int) -> None:
    from tokenizers import Tokenizer, models

    from embedkit.local.loader import check_vocabulary

    tokenizer = Tokenizer(models.WordLevel({f"t{i}": i for i in range(tokens)}, unk_token="t0"))
    with torch.device("meta"), pytest.raises(ModelLoadError, match=rf"has {tokens} tokens, .* has {rows} rows"):
        check_vocabulary(tokenizer, torch.nn.Embedding(rows, 1), Path("m/tokenizer.json"))


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path(_Payload.target),))


def test_pickled_weights_only_when_asked_and_never_run_code(model_dir: Path, tmp_path: Path) -> None:
    state = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    torch.save(state, model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="allow_pickle"):
        embedkit.load(model_dir)
    assert embedkit.load(model_dir, allow_pickle=True).embed(["fine"]).shape == (1, 32)

    _Payload.target = str(tmp_path / "pwned")
    with (model_dir / "pytorch_model.bin").open("wb") as out:
        pickle.dump({"x": _Payload()}, out, protocol=2)  # the protocol torch.load expects
    with pytest.raises(ModelLoadError, match="cannot read weights"):
        embedkit.load(model_dir, allow_pickle=True)
    assert not (tmp_path / "pwned").exists()  # weights_only=True refused to build the object


def test_remote_code_is_never_requested(model_dir: Path) -> None:
    config = json.loads((model_dir / "config.json").read_text())
    config["auto_map"] = {"AutoModel": "evil.modeling.EvilModel"}
    (model_dir / "config.json").write_text(json.dumps(config))
    (model_dir / "evil").mkdir()
    (model_dir / "evil" / "modeling.py").write_text("raise SystemExit('remote code ran')\n")
    assert embedkit.load(model_dir).embed(["still our own BERT"]).shape == (1, 32)

"""Qwen3-Reranker on embedkit's Qwen vs transformers' Qwen3ForCausalLM computing the model card's formula.

Tiny random checkpoints are written by transformers' own Qwen3ForCausalLM (`save_pretrained`: `model.*`
plus `lm_head.weight`, or no lm_head when `tie_word_embeddings` is true), beside a byte-level BPE
tokenizer built here with Qwen's chat special tokens and single "yes" / "no" tokens. The reference is the
Qwen3-Reranker model card's usage code written out here (its literal prompt strings, not embedkit's
constants): left padding, `logits[:, -1, [no, yes]]`, log_softmax, exp.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM, Qwen3Model

import embedkit
from embedkit.errors import InputError, ModelLoadError
from embedkit.rerank.base import Reranker
from embedkit.rerank.qwen3 import Qwen3Reranker, is_qwen3_reranker, load_qwen3_reranker
from embedkit.weights import tensor_shapes

# the model card's strings, written out independently of embedkit's constants
CARD_PREFIX = (
    "<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct "
    'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
)
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"

QUERIES = ["What is the capital of China?", "Explain gravity", "how do vector databases index embeddings?"]
DOCUMENTS = [
    "The capital of China is Beijing.",
    "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects.",
    "yes",
    "Qdrant stores points with payloads and supports filtered search. " * 3,
    "東京タワーは東京にあります。",
    "def search(q):\n    return index.query(q, k=10)",
]
CORPUS = [*QUERIES, *DOCUMENTS, "yes no yes no", "Judge whether the Document meets the requirements"]
TOLERANCE = 1e-5


def qwen_like_tokenizer(*, appends_end_of_text: bool = False) -> Tokenizer:
    """Byte-level BPE as Qwen's, with <|endoftext|>, <|im_start|>, <|im_end|> special and <think> tokens added."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    # "yes" / "no" alone at a text's start, so that BPE learns them as whole tokens (no leading space)
    tokenizer.train_from_iterator([*CORPUS, *(["yes", "no"] * 50)] * 4, trainer)
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer.add_tokens(["<think>", "</think>"])  # added, not special, as in Qwen3's tokenizer.json
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    if appends_end_of_text:  # as Qwen3-Embedding's tokenizer.json
        end = tokenizer.token_to_id("<|endoftext|>")
        tokenizer.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>",
            pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", end)],
        )
    return tokenizer


def tiny_config(*, tied: bool) -> Qwen3Config:
    return Qwen3Config(
        vocab_size=320,  # past the tokenizer's ids, as Qwen's tables are padded
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=24,  # explicit and != 64 / 4, as Qwen3's 128
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        rms_norm_eps=1e-6,
        tie_word_embeddings=tied,
        initializer_range=0.2,  # larger than the default so that logits (and scores) spread
        architectures=["Qwen3ForCausalLM"],
    )


def perturb_norms(model: torch.nn.Module, seed: int) -> None:
    """Norm weights around 1 instead of exactly 1, so that they matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.copy_(1.0 + 0.1 * torch.randn(parameter.shape, generator=g))


def write_tokenizer(target: Path, *, appends_end_of_text: bool = False) -> None:
    qwen_like_tokenizer(appends_end_of_text=appends_end_of_text).save(str(target / "tokenizer.json"))
    (target / "tokenizer_config.json").write_text(
        json.dumps({"tokenizer_class": "Qwen2Tokenizer", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})
    )


def write_reranker(target: Path, *, tied: bool, seed: int, appends_end_of_text: bool = False) -> Path:
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(tiny_config(tied=tied)).eval()
    perturb_norms(model, seed)
    model.save_pretrained(str(target))
    write_tokenizer(target, appends_end_of_text=appends_end_of_text)
    return target


@pytest.fixture(scope="module")
def untied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reranker(tmp_path_factory.mktemp("qwen3-reranker-untied"), tied=False, seed=1)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_reranker(tmp_path_factory.mktemp("qwen3-reranker-tied"), tied=True, seed=2)


def card_inputs(model_dir: Path, pairs: list[tuple[str, str]], instruction: str, max_length: int) -> dict:
    """The model card's `process_inputs`: left-padded ids and mask."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    prefix = tokenizer.encode(CARD_PREFIX, add_special_tokens=False)
    suffix = tokenizer.encode(CARD_SUFFIX, add_special_tokens=False)
    texts = [f"<Instruct>: {instruction}\n<Query>: {query}\n<Document>: {doc}" for query, doc in pairs]
    inputs = tokenizer(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )
    for i, ids in enumerate(inputs["input_ids"]):
        inputs["input_ids"][i] = prefix + ids + suffix
    # the card also passes max_length here, which padding=True ignores (transformers warns so): left out
    return tokenizer.pad(inputs, padding=True, return_tensors="pt")


@torch.inference_mode()
def card_scores(
    model_dir: Path, pairs: list[tuple[str, str]], *, instruction: str = CARD_INSTRUCTION, max_length: int = 8192
) -> list[float]:
    """The model card's `compute_logits` on transformers' Qwen3ForCausalLM."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), padding_side="left")
    no, yes = tokenizer.convert_tokens_to_ids("no"), tokenizer.convert_tokens_to_ids("yes")
    model = Qwen3ForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32, attn_implementation="eager").eval()
    logits = model(**card_inputs(model_dir, pairs, instruction, max_length)).logits[:, -1, :]
    scores = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)
    return scores[:, 1].exp().tolist()


def all_pairs() -> list[tuple[str, str]]:
    return [(query, doc) for query in QUERIES for doc in DOCUMENTS]


def assert_close(ours: list[float], reference: list[float]) -> None:
    diff = max(abs(a - b) for a, b in zip(ours, reference, strict=True))
    assert diff < TOLERANCE, f"max abs diff {diff:.2e}"


# -- parity ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["untied", "tied"])
def test_scores_match_the_model_card_formula(layout: str, request: pytest.FixtureRequest) -> None:
    model_dir = request.getfixturevalue(f"{layout}_dir")
    names = set(tensor_shapes(model_dir))
    assert ("lm_head.weight" in names) == (layout == "untied")  # transformers drops the tied copy
    reranker = load_qwen3_reranker(model_dir)
    assert isinstance(reranker, Reranker)
    pairs = all_pairs()
    ours, reference = reranker.score(pairs), card_scores(model_dir, pairs)
    assert_close(ours, reference)
    assert max(reference) - min(reference) > 0.05  # the random model really tells pairs apart


def test_raw_scores_are_the_yes_minus_no_log_odds(untied_dir: Path) -> None:
    reranker = load_qwen3_reranker(untied_dir)
    pairs = all_pairs()
    raw = torch.tensor(reranker.score(pairs, raw_scores=True), dtype=torch.float64)
    assert_close(torch.sigmoid(raw).tolist(), card_scores(untied_dir, pairs))


def test_instruction_at_load_and_per_call(untied_dir: Path) -> None:
    instruction = "Given a question, find code that answers it"
    pairs = all_pairs()[:6]
    expected = card_scores(untied_dir, pairs, instruction=instruction)
    assert_close(load_qwen3_reranker(untied_dir, instruction=instruction).score(pairs), expected)
    default = load_qwen3_reranker(untied_dir)
    assert_close(default.score(pairs, instruction=instruction), expected)
    assert_close(default.score(pairs), card_scores(untied_dir, pairs))
    results = default.rerank(QUERIES[0], DOCUMENTS, instruction=instruction)
    assert [r.score for r in results] == pytest.approx(sorted(expected, reverse=True), abs=TOLERANCE)


def test_tokenizer_special_tokens_are_added_as_the_card_adds_them(tmp_path: Path) -> None:
    """A tokenizer.json that appends <|endoftext|> (as Qwen3-Embedding's): the card's tokenizer call adds it
    after the pair text, before the suffix; embedkit's prompt must hold it in the same place."""
    model_dir = write_reranker(tmp_path / "appends", tied=True, seed=3, appends_end_of_text=True)
    reranker = load_qwen3_reranker(model_dir)
    pairs = all_pairs()[:4]
    rows, _ = reranker.encode_pairs(pairs, CARD_INSTRUCTION)
    card = card_inputs(model_dir, pairs, CARD_INSTRUCTION, 8192)
    for row, ids, mask in zip(rows, card["input_ids"].tolist(), card["attention_mask"].tolist(), strict=True):
        assert row == [i for i, m in zip(ids, mask, strict=True) if m]
    assert_close(reranker.score(pairs), card_scores(model_dir, pairs))


# -- truncation -----------------------------------------------------------------------------------------------


def test_truncation_cuts_the_document_as_the_card(untied_dir: Path) -> None:
    max_length = 300
    long_doc = "Gravity is a force that attracts two bodies towards each other. " * 20
    pairs = [(QUERIES[1], long_doc), (QUERIES[0], DOCUMENTS[0]), (QUERIES[2], long_doc + "tail")]
    reranker = load_qwen3_reranker(untied_dir, max_length=max_length)
    assert reranker.max_input_tokens == max_length
    rows, cut = reranker.encode_pairs(pairs, CARD_INSTRUCTION)
    card = card_inputs(untied_dir, pairs, CARD_INSTRUCTION, max_length)
    for row, ids, mask in zip(rows, card["input_ids"].tolist(), card["attention_mask"].tolist(), strict=True):
        assert row == [i for i, m in zip(ids, mask, strict=True) if m]
    assert cut == 2 and max(len(row) for row in rows) == max_length
    before = reranker.truncated_count
    assert_close(reranker.score(pairs), card_scores(untied_dir, pairs, max_length=max_length))
    assert reranker.truncated_count == before + 2
    with pytest.raises(InputError, match=r"pairs\[0\].*truncate=False"):
        reranker.score(pairs, truncate=False)
    assert reranker.score(pairs[1:2], truncate=False)  # a pair that fits is fine without truncation


def test_the_query_is_never_cut(untied_dir: Path) -> None:
    reranker = load_qwen3_reranker(untied_dir, max_length=200)
    with pytest.raises(InputError, match=r"pairs\[0\]: the instruction and query take \d+ tokens"):
        reranker.score([("a very long query " * 40, "doc")])


# -- batching -------------------------------------------------------------------------------------------------


def test_batches_of_mixed_lengths_equal_one_at_a_time(untied_dir: Path) -> None:
    pairs = all_pairs()
    whole = load_qwen3_reranker(untied_dir).score(pairs)
    small = load_qwen3_reranker(untied_dir, batch_tokens=200, max_batch_size=3)
    rows, _ = small.encode_pairs(pairs, CARD_INSTRUCTION)
    assert len({len(row) for row in rows}) > 3  # really mixed lengths
    singles = [small.score([pair])[0] for pair in pairs]
    assert_close(small.score(pairs), singles)
    assert_close(whole, singles)


def test_rerank_orders_by_score(tied_dir: Path) -> None:
    reranker = load_qwen3_reranker(tied_dir)
    scores = reranker.score([(QUERIES[0], doc) for doc in DOCUMENTS])
    results = reranker.rerank(QUERIES[0], DOCUMENTS, top_k=3, return_documents=True)
    order = sorted(range(len(DOCUMENTS)), key=lambda i: -scores[i])[:3]
    assert [r.index for r in results] == order
    assert [r.document for r in results] == [DOCUMENTS[i] for i in order]
    assert [r.score for r in results] == pytest.approx([scores[i] for i in order], abs=1e-6)
    fingerprint = reranker.fingerprint()
    assert fingerprint["instruction"] == CARD_INSTRUCTION
    assert CARD_PREFIX in fingerprint["template"] and fingerprint["template"].endswith(CARD_SUFFIX)


# -- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda r: r.rerank("", DOCUMENTS), "query is empty"),
        (lambda r: r.rerank(" ", DOCUMENTS), "query is empty"),
        (lambda r: r.rerank("q", []), "documents is empty"),
        (lambda r: r.rerank("q", "one document"), "documents must be a list"),
        (lambda r: r.rerank("q", ["a", 3]), r"documents\[1\] is int"),
        (lambda r: r.rerank("q", DOCUMENTS, top_k=0), "top_k=0"),
        (lambda r: r.score([]), "pairs is empty"),
        (lambda r: r.score([("q", "d"), ("", "d")]), r"pairs\[1\]'s query is empty"),
        (lambda r: r.score([("q", "d", "x")]), r"pairs\[0\] must be a \(query, document\) pair"),
        (lambda r: r.score([("q", "d")], instruction=3), "instruction is int"),
    ],
)
def test_bad_input(tied_dir: Path, call: object, message: str) -> None:
    reranker = load_qwen3_reranker(tied_dir)
    with pytest.raises(InputError, match=message):
        call(reranker)  # type: ignore[operator]


def test_an_embedding_folder_is_not_a_reranker(tmp_path: Path) -> None:
    """Qwen3-Embedding saves a bare Qwen3Model (unprefixed, no lm_head); its config.json still names
    Qwen3ForCausalLM, so the tensors decide."""
    target = tmp_path / "qwen3-embedding"
    torch.manual_seed(0)
    Qwen3Model(tiny_config(tied=True)).save_pretrained(str(target))
    write_tokenizer(target, appends_end_of_text=True)
    config = json.loads((target / "config.json").read_text())
    config["architectures"] = ["Qwen3ForCausalLM"]
    (target / "config.json").write_text(json.dumps(config))
    names = set(tensor_shapes(target))
    assert not is_qwen3_reranker(config, names)
    with pytest.raises(ModelLoadError, match=r"embedding model .*not a reranker"):
        load_qwen3_reranker(target)


def test_detection_reads_config_and_tensors(untied_dir: Path, tied_dir: Path, tmp_path: Path) -> None:
    for model_dir in (untied_dir, tied_dir):
        config = json.loads((model_dir / "config.json").read_text())
        assert is_qwen3_reranker(config, set(tensor_shapes(model_dir)))
    # an untied config whose head is missing
    headless = Path(shutil.copytree(tied_dir, tmp_path / "headless"))
    config = json.loads((headless / "config.json").read_text())
    config["tie_word_embeddings"] = False
    (headless / "config.json").write_text(json.dumps(config))
    assert not is_qwen3_reranker(config, set(tensor_shapes(headless)))
    with pytest.raises(ModelLoadError, match=r"no lm_head\.weight"):
        load_qwen3_reranker(headless)
    config.update(architectures=["Qwen3ForSequenceClassification"], tie_word_embeddings=True)
    assert not is_qwen3_reranker(config, set(tensor_shapes(tied_dir)))


def test_a_tokenizer_without_yes_is_refused(tied_dir: Path, tmp_path: Path) -> None:
    other = Path(shutil.copytree(tied_dir, tmp_path / "no-yes"))
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=280, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(["Qdrant stores points"] * 4, trainer)
    tokenizer.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer.save(str(other / "tokenizer.json"))
    with pytest.raises(ModelLoadError, match="no 'no' token"):
        load_qwen3_reranker(other)


def test_load_reranker_detects_qwen3_reranker(tied_dir: Path) -> None:
    instruction = "Given a question, find code that answers it"
    reranker = embedkit.load_reranker(tied_dir, device="cpu", instruction=instruction)
    assert isinstance(reranker, Qwen3Reranker)
    pairs = all_pairs()[:4]
    assert_close(reranker.score(pairs), card_scores(tied_dir, pairs, instruction=instruction))
    with pytest.raises(InputError, match="torch only"):
        embedkit.load_reranker(tied_dir, backend="onnx")


def test_embedkit_load_refuses_a_qwen3_reranker(tied_dir: Path) -> None:
    """The reverse of the check above: the reranker's folder is not an embedding model."""
    with pytest.raises(ModelLoadError, match=r"a reranker, not an embedding model .*Qwen3-Reranker.*load_reranker"):
        embedkit.load(tied_dir, device="cpu")


def test_an_empty_document_is_scored_like_any_other(tied_dir: Path) -> None:
    """The same input policy as the cross-encoders (embedkit/rerank/inputs.py): a candidate with no text is
    still a candidate, and ranks where the model puts it."""
    reranker = load_qwen3_reranker(tied_dir)
    ranked = reranker.rerank("bees in winter", ["", *DOCUMENTS[:2]])
    assert sorted(r.index for r in ranked) == [0, 1, 2]
    assert ranked == reranker.rerank("bees in winter", ["", *DOCUMENTS[:2]])
    assert_close(reranker.score([("bees in winter", "")]), card_scores(tied_dir, [("bees in winter", "")]))

"""Cross-encoders: embedkit's scores against sentence-transformers' CrossEncoder and transformers'
AutoModelForSequenceClassification on tiny random checkpoints in the published layouts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import embedkit
from embedkit.errors import InputError, ModelLoadError
from embedkit.rerank import Reranker, RerankResult

from ..conftest import gte_native_copy, write_tiny_cross_encoder

MAX_LENGTH = 64
QUERY = "what do cats eat"
DOCUMENTS = [
    "Cats are carnivores: they eat meat, mostly small animals and fish.",
    "The stock market fell sharply on Tuesday.",
    "x",
    "Domestic cats are fed dry or wet food. " * 30,  # past MAX_LENGTH: the document is cut
    "Cats sleep for most of the day.",
]
PAIRS = [(QUERY, document) for document in DOCUMENTS] + [
    ("a much longer question about feline diets and nutrition in general", "Cats need taurine."),
    ("q", "word " * 200),
]

KINDS = [("bert", 1), ("bert", 3), ("xlm_roberta", 1), ("xlm_roberta", 2), ("gte", 1), ("gte", 2)]
KINDS += [("modernbert", 1), ("modernbert", 2)]


@pytest.fixture(scope="module", params=KINDS, ids=[f"{family}-{labels}" for family, labels in KINDS])
def kind_dirs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder embedkit loads, the folder the references load): the same but for GTE, whose published
    layout needs remote code; the references read the same weights under transformers' native GteConfig."""
    family, labels = request.param
    target = tmp_path_factory.mktemp(f"ce-{family}-{labels}")
    model_dir = write_tiny_cross_encoder(target / "model", family, labels, seed=3, max_length=MAX_LENGTH)
    return model_dir, gte_native_copy(model_dir, target / "native") if family == "gte" else model_dir


def hf_logits(model_dir: Path, pairs: list[tuple[str, str]]) -> np.ndarray:
    """transformers' own model and tokenizer: [P, L] logits, the tokenizer truncating at MAX_LENGTH."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir)).eval()
    queries, documents = zip(*pairs, strict=True)
    batch = tokenizer(
        list(queries),
        list(documents),
        padding=True,
        truncation="only_second",
        max_length=MAX_LENGTH,
        return_tensors="pt",
    )
    with torch.no_grad():
        return model(**batch).logits.numpy()


def test_scores_match_sentence_transformers_and_transformers(kind_dirs: tuple[Path, Path]) -> None:
    from sentence_transformers import CrossEncoder

    model_dir, reference_dir = kind_dirs
    reranker = embedkit.load_reranker(model_dir, device="cpu", backend="torch")
    reference = CrossEncoder(str(reference_dir), device="cpu")
    labels = reference.num_labels
    assert reranker.num_labels == labels and reranker.max_input_tokens == MAX_LENGTH
    assert reranker.activation == ("Sigmoid" if labels == 1 else "Identity")
    ours = np.array(reranker.predict(PAIRS))
    st_scores = np.asarray(reference.predict(PAIRS)).reshape(len(PAIRS), labels)
    assert np.abs(ours - st_scores).max() < 1e-5
    raw = np.array(reranker.predict(PAIRS, raw_scores=True))
    logits = hf_logits(reference_dir, PAIRS)
    assert np.abs(raw - logits).max() < 1e-5
    assert (
        np.abs(raw - np.asarray(reference.predict(PAIRS, activation_fn=torch.nn.Identity())).reshape(raw.shape)).max()
        < 1e-5
    )
    # two pairs were past MAX_LENGTH and had their documents cut
    assert reranker.truncated_count == 4
    if labels == 1:
        assert np.abs(np.array(reranker.score(PAIRS)) - st_scores[:, 0]).max() < 1e-5
        assert np.abs(np.array(reranker.score(PAIRS, raw_scores=True)) - logits[:, 0]).max() < 1e-5


def test_first_token_path_equals_the_whole_last_layer(kind_dirs: tuple[Path, Path]) -> None:
    """`encode_first` (the last layer run for the first position only) is `encode(...)[:, 0]` on padded rows."""
    from embedkit.models.layers import PaddedAttention

    reranker = embedkit.load_reranker(kind_dirs[0], device="cpu", backend="torch")
    encoder = reranker.runner.module.encoder
    if not hasattr(encoder, "encode_first"):
        pytest.skip(f"{type(encoder).__name__} has no first-token path: it runs its last layer whole")
    lengths = torch.tensor([9, 3, 17, 1])
    mask = torch.arange(17)[None, :] < lengths[:, None]
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(5, 90, (4, 17), generator=generator).masked_fill(~mask, 0)
    position_ids = torch.arange(17).expand(4, 17)
    types = (torch.arange(17)[None, :] >= 2).long() * mask if encoder.token_types > 1 else None
    with torch.inference_mode():
        whole = encoder.encode(input_ids, position_ids, PaddedAttention(mask), None, token_type_ids=types)[:, 0]
        first = encoder.encode_first(input_ids, position_ids, PaddedAttention(mask), token_type_ids=types)
    assert first.shape == whole.shape
    assert torch.allclose(first, whole, atol=1e-6, rtol=0)


def test_rerank_matches_sentence_transformers_rank(tiny_cross_encoder_dir: Path) -> None:
    from sentence_transformers import CrossEncoder

    reranker = embedkit.load_reranker(tiny_cross_encoder_dir, device="cpu", backend="torch")
    assert isinstance(reranker, Reranker)
    reference = CrossEncoder(str(tiny_cross_encoder_dir), device="cpu")
    expected = reference.rank(QUERY, DOCUMENTS, return_documents=True)
    results = reranker.rerank(QUERY, DOCUMENTS, return_documents=True)
    assert [r.index for r in results] == [e["corpus_id"] for e in expected]
    assert [r.document for r in results] == [e["text"] for e in expected]
    assert np.abs(np.array([r.score for r in results]) - np.array([e["score"] for e in expected])).max() < 1e-5
    top = reranker.rerank(QUERY, DOCUMENTS, top_k=2)
    assert top == [RerankResult(r.index, r.score) for r in results[:2]]
    # one document scores as it does among others (batching and padding do not leak between pairs)
    alone = reranker.score([(QUERY, DOCUMENTS[1])])[0]
    assert abs(alone - next(r.score for r in results if r.index == 1)) < 1e-6


def test_truncation_cuts_the_document_only(tmp_path: Path) -> None:
    model_dir = write_tiny_cross_encoder(tmp_path / "ce", seed=5, max_length=32)
    reranker = embedkit.load_reranker(model_dir, device="cpu", backend="torch")
    long_query = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu"
    document = " ".join(f"w{i}" for i in range(80))
    # sentence-transformers' longest_first cuts the longer side: the document here, as ours does
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(str(model_dir), device="cpu").predict([(long_query, document)])
    assert abs(reranker.score([(long_query, document)])[0] - float(expected[0])) < 1e-5
    assert reranker.truncated_count == 1
    # cutting the document's other end gives another score, and is counted
    left = reranker.score([(long_query, document)], truncation_direction="left")[0]
    assert abs(left - float(expected[0])) > 1e-7 and reranker.truncated_count == 2
    with pytest.raises(InputError, match=r"pairs\[0\] is \d+ tokens long, over this model's limit of 32"):
        reranker.score([(long_query, document)], truncate=False)
    with pytest.raises(InputError, match=r"documents\[1\] with the query is \d+ tokens long"):
        reranker.rerank(long_query, ["short", document], truncate=False)
    # a query that leaves no room for the document is the caller's to shorten
    with pytest.raises(InputError, match=r"query is .* leaves no room for the document"):
        reranker.rerank(long_query * 3, ["short document"])
    assert reranker.truncated_count == 2


def test_bad_input_is_named(tiny_cross_encoder_dir: Path) -> None:
    reranker = embedkit.load_reranker(tiny_cross_encoder_dir, device="cpu", backend="torch")
    with pytest.raises(InputError, match="documents is empty"):
        reranker.rerank(QUERY, [])
    with pytest.raises(InputError, match="query is empty"):
        reranker.rerank("  ", DOCUMENTS)
    with pytest.raises(InputError, match="top_k=0"):
        reranker.rerank(QUERY, DOCUMENTS, top_k=0)
    with pytest.raises(InputError, match=r"documents\[1\] is int"):
        reranker.rerank(QUERY, ["ok", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="pairs is empty"):
        reranker.score([])
    with pytest.raises(InputError, match=r"pairs\[1\]'s query is empty"):
        reranker.score([("q", "d"), ("", "d")])
    with pytest.raises(InputError, match="truncation_direction"):
        reranker.score([("q", "d")], truncation_direction="middle")


def test_multi_label_model_has_no_single_score(tmp_path: Path) -> None:
    reranker = embedkit.load_reranker(
        write_tiny_cross_encoder(tmp_path / "ce", num_labels=3), device="cpu", backend="torch"
    )
    with pytest.raises(InputError, match="has 3 labels; reranking needs one"):
        reranker.rerank(QUERY, DOCUMENTS)
    assert len(reranker.predict([(QUERY, "d")])[0]) == 3


@pytest.mark.parametrize(
    "where",
    ["config_sentence_transformers", "config.json sentence_transformers", "sbert_ce_default_activation_function"],
)
def test_recorded_activation_is_applied(tmp_path: Path, where: str) -> None:
    from sentence_transformers import CrossEncoder

    model_dir = write_tiny_cross_encoder(tmp_path / "ce", seed=7)
    st_config = json.loads((model_dir / "config_sentence_transformers.json").read_text())
    config = json.loads((model_dir / "config.json").read_text())
    del st_config["activation_fn"]
    identity = "torch.nn.modules.linear.Identity"
    if where == "config_sentence_transformers":
        st_config["activation_fn"] = identity
    elif where == "config.json sentence_transformers":
        config["sentence_transformers"] = {"activation_fn": identity}
    else:
        config["sbert_ce_default_activation_function"] = identity
    (model_dir / "config_sentence_transformers.json").write_text(json.dumps(st_config))
    (model_dir / "config.json").write_text(json.dumps(config))
    reranker = embedkit.load_reranker(model_dir, device="cpu", backend="torch")
    assert reranker.activation == "Identity"
    expected = CrossEncoder(str(model_dir), device="cpu").predict(PAIRS)
    assert np.abs(np.array(reranker.score(PAIRS)) - expected).max() < 1e-5
    assert reranker.score(PAIRS) == reranker.score(PAIRS, raw_scores=True)


def test_legacy_folder_without_sentence_transformers_files(tmp_path: Path) -> None:
    """ms-marco-MiniLM as first published: config.json, weights and tokenizer only."""
    model_dir = write_tiny_cross_encoder(tmp_path / "ce", seed=8)
    for name in ("config_sentence_transformers.json", "modules.json", "sentence_bert_config.json"):
        (model_dir / name).unlink()
    reranker = embedkit.load_reranker(model_dir, device="cpu", backend="torch")
    assert reranker.activation == "Sigmoid" and reranker.max_input_tokens == 128
    from sentence_transformers import CrossEncoder

    expected = CrossEncoder(str(model_dir), device="cpu").predict(PAIRS)
    assert np.abs(np.array(reranker.score(PAIRS)) - expected).max() < 1e-5


def test_loaders_refuse_each_others_folders(tiny_cross_encoder_dir: Path, tiny_bert_dir: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"not a cross-encoder.*use embedkit\.load"):
        embedkit.load_reranker(tiny_bert_dir, device="cpu")
    with pytest.raises(
        ModelLoadError, match=r"a reranker, not an embedding model .*load it with embedkit\.load_reranker"
    ):
        embedkit.load(tiny_cross_encoder_dir, device="cpu")


def test_classifier_without_head_tensors_is_refused(tmp_path: Path, tiny_bert_dir: Path) -> None:
    import shutil

    model_dir = tmp_path / "no-head"
    shutil.copytree(tiny_bert_dir, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["BertForSequenceClassification"]
    (model_dir / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match=r"no sequence-classification head in the weights \(no classifier\.\*"):
        embedkit.load_reranker(model_dir, device="cpu")


def test_fingerprint_names_what_decides_the_scores(tiny_cross_encoder_dir: Path) -> None:
    reranker = embedkit.load_reranker(tiny_cross_encoder_dir, device="cpu", backend="torch")
    fingerprint = reranker.fingerprint()
    assert fingerprint["kind"] == "cross-encoder" and fingerprint["family"] == "bert"
    assert fingerprint["activation"] == "Sigmoid" and fingerprint["num_labels"] == 1
    assert len(fingerprint["weights_digest"]) == 64

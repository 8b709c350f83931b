"""bge-m3's sparse (lexical weights) and multi-vector (ColBERT) heads against the published formulas.

The reference is computed here over transformers' XLMRobertaModel outputs, by FlagEmbedding's rules
(FlagEmbedding is not a dependency): lexical weights = relu(sparse_linear(h)) per token, the max per token
id, the tokenizer's cls/eos/pad/unk left out, zeros dropped; ColBERT vectors = normalize(colbert_linear(h))
over the real tokens after the first; ColBERT score = mean over query vectors of the max dot product.
"""

from __future__ import annotations

import json
import pickle
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import embedkit
from embedkit.errors import InputError, ModelLoadError
from embedkit.models.bge_m3 import colbert_score, maxsim
from embedkit.sparse import load_sparse
from embedkit.sparse.bge_m3 import M3SparseEncoder

from ..conftest import roberta_style_tokenizer

MAX_SEQ = 128
TEXTS = [
    "Hallo Welt",
    "Bonjour tout le monde, comment allez-vous aujourd'hui? tout tout le monde",
    "x",
    "word " * 200,  # past the limit: cut
    "the the the quick brown fox",  # repeated ids: the max weight
]


def write_tiny_bge_m3(
    target: Path, tokenizer_dir: Path, *, seed: int = 0, colbert_dim: int = 32, sparse_bias: float = 0.2
) -> Path:
    """A random XLM-RoBERTa encoder in bge-m3's published layout: config.json + weights (XLMRobertaModel),
    the tokenizer files (all-MiniLM-L6-v2's vocabulary with XLM-R's `<s> a </s>` template; [CLS]/[SEP]/[PAD]
    stand in for <s>/</s>/<pad>), the sentence-transformers files (CLS pooling, Normalize), and the two
    heads as bge-m3 ships them: torch.save of a Linear's state dict in sparse_linear.pt / colbert_linear.pt.
    `sparse_bias` sets how many tokens weigh more than 0 (0.2: most of them, some not; 2: nearly all)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    torch.manual_seed(seed)
    config = XLMRobertaConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=MAX_SEQ + 2,
        pad_token_id=0,
        type_vocab_size=1,
    )
    XLMRobertaModel(config, add_pooling_layer=False).eval().save_pretrained(target, safe_serialization=True)
    roberta_style_tokenizer(tokenizer_dir, target)
    settings = json.loads((target / "tokenizer_config.json").read_text())
    specials = {"bos_token": "[CLS]", "cls_token": "[CLS]", "eos_token": "[SEP]", "sep_token": "[SEP]",
                "pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]"}  # fmt: skip
    (target / "tokenizer_config.json").write_text(json.dumps({**settings, **specials}))
    (target / "special_tokens_map.json").write_text(json.dumps(specials))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (target / "modules.json").write_text(json.dumps(modules))
    (target / "1_Pooling").mkdir(exist_ok=True)
    (target / "2_Normalize").mkdir(exist_ok=True)
    (target / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": 32, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False})
    )
    (target / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": MAX_SEQ, "do_lower_case": False}))
    sparse, colbert = nn.Linear(32, 1), nn.Linear(32, colbert_dim)
    with torch.no_grad():
        sparse.bias.fill_(sparse_bias)
    torch.save(sparse.state_dict(), target / "sparse_linear.pt")
    torch.save(colbert.state_dict(), target / "colbert_linear.pt")
    return target


def reference(model_dir: Path, texts: list[str]) -> tuple[np.ndarray, list[dict[int, float]], list[np.ndarray]]:
    """Dense CLS vectors, lexical weights and ColBERT vectors by FlagEmbedding's formulas over transformers."""
    from transformers import AutoTokenizer, XLMRobertaModel

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = XLMRobertaModel.from_pretrained(str(model_dir), add_pooling_layer=False).eval()
    sparse = nn.Linear(32, 1)
    sparse.load_state_dict(torch.load(model_dir / "sparse_linear.pt", weights_only=True))
    state = torch.load(model_dir / "colbert_linear.pt", weights_only=True)
    colbert = nn.Linear(32, state["weight"].shape[0])
    colbert.load_state_dict(state)
    batch = tokenizer(texts, padding=True, truncation=True, max_length=MAX_SEQ, return_tensors="pt")
    batch.pop("token_type_ids", None)
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
        dense = torch.nn.functional.normalize(hidden[:, 0], dim=-1).numpy()
        token_weights = torch.relu(sparse(hidden)).squeeze(-1).numpy()
        vecs = colbert(hidden[:, 1:]) * batch["attention_mask"][:, 1:, None].float()
        vecs = torch.nn.functional.normalize(vecs, dim=-1).numpy()
    unused = {
        tokenizer.convert_tokens_to_ids(tokenizer.special_tokens_map[name])
        for name in ("cls_token", "eos_token", "pad_token", "unk_token")
        if name in tokenizer.special_tokens_map
    }
    lexical = []
    for weights, ids in zip(token_weights, batch["input_ids"].tolist(), strict=True):
        result: dict[int, float] = defaultdict(float)
        for w, idx in zip(weights, ids, strict=True):
            if idx not in unused and w > 0 and w > result[idx]:
                result[idx] = float(w)
        lexical.append(dict(result))
    lengths = batch["attention_mask"].sum(1).tolist()
    return dense, lexical, [v[: n - 1] for v, n in zip(vecs, lengths, strict=True)]


@pytest.fixture(scope="module")
def m3_dir(tmp_path_factory: pytest.TempPathFactory, minilm_dir: Path) -> Path:
    return write_tiny_bge_m3(tmp_path_factory.mktemp("bge-m3"), minilm_dir, seed=7)


@pytest.fixture(scope="module")
def m3(m3_dir: Path):
    return embedkit.load(m3_dir, device="cpu", backend="torch")


def assert_lexical_close(ours: list[dict[int, float]], theirs: list[dict[int, float]]) -> None:
    assert len(ours) == len(theirs)
    for got, want in zip(ours, theirs, strict=True):
        assert got.keys() == want.keys()
        assert max((abs(got[k] - want[k]) for k in want), default=0.0) < 1e-5


def assert_multivectors_close(ours: list[np.ndarray], theirs: list[np.ndarray]) -> None:
    assert [v.shape for v in ours] == [v.shape for v in theirs]
    assert max(float(np.abs(a - b).max()) for a, b in zip(ours, theirs, strict=True)) < 1e-5


def test_heads_match_the_published_formulas(m3_dir: Path, m3) -> None:
    dense, lexical, vectors = reference(m3_dir, TEXTS)
    assert m3.family == "xlm_roberta" and m3.heads is not None and m3.heads.multivector_size == 32
    assert_lexical_close(m3.embed_lexical(TEXTS), lexical)
    multivectors = m3.embed_multivector(TEXTS)
    assert_multivectors_close(multivectors, vectors)
    assert multivectors[3].shape == (MAX_SEQ - 1, 32)  # truncated at the limit, CLS dropped, end token kept
    np.testing.assert_allclose(np.linalg.norm(multivectors[0], axis=1), 1.0, atol=1e-6)
    assert np.abs(m3.embed(TEXTS) - dense).max() < 1e-5
    # repeated tokens: one entry each, the max of their weights; special tokens never appear
    the = m3.tokenizer.token_to_id("the")
    assert the in lexical[4] and not {101, 102, 0, 100} & set(m3.embed_lexical(TEXTS)[4])


def test_models_inspect_names_the_heads(m3_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from embedkit.cli import main

    assert main(["models", "inspect", str(m3_dir)]) == 0
    out = capsys.readouterr().out
    assert "xlm_roberta" in out
    assert "sparse_linear.pt: lexical weights (32 -> 1); colbert_linear.pt: ColBERT vectors (32 -> 32)" in out


def test_one_pass_gives_all_three_outputs(m3_dir: Path, m3) -> None:
    dense, lexical, vectors = reference(m3_dir, TEXTS)
    everything = m3.embed_all(TEXTS)
    assert np.abs(everything.dense - dense).max() < 1e-5
    assert everything.lexical is not None and everything.multivector is not None
    assert_lexical_close(everything.lexical, lexical)
    assert_multivectors_close(everything.multivector, vectors)


def test_colbert_score_is_flagembeddings_and_maxsim_is_its_sum(m3_dir: Path, m3) -> None:
    query, *documents = TEXTS[:3]
    _, _, ref = reference(m3_dir, [query, *documents])
    q = m3.embed_multivector([query])[0]
    for document, ref_doc in zip(m3.embed_multivector(documents), ref[1:], strict=True):
        # FlagEmbedding's colbert_score: einsum('in,jn->ij'), max over the document, sum / n query vectors
        token_scores = torch.einsum("in,jn->ij", torch.from_numpy(ref[0]), torch.from_numpy(ref_doc))
        expected = float(token_scores.max(-1).values.sum() / ref[0].shape[0])
        assert abs(colbert_score(q, document) - expected) < 1e-5
        assert abs(maxsim(q, document) - expected * len(q)) < 1e-5


def test_mixed_lengths_and_batches_change_nothing(m3) -> None:
    alone = [m3.embed_multivector([text])[0] for text in TEXTS]
    assert_multivectors_close(m3.embed_multivector(TEXTS), alone)
    assert_lexical_close(m3.embed_lexical(TEXTS), [m3.embed_lexical([text])[0] for text in TEXTS])


def test_sparse_encoder_contract(m3_dir: Path, m3) -> None:
    encoder = load_sparse(m3_dir, device="cpu", backend="torch")
    assert isinstance(encoder, M3SparseEncoder) and encoder.modifier is None
    _, lexical, _ = reference(m3_dir, TEXTS)
    vectors = encoder.embed_documents(TEXTS)
    for vector, want in zip(vectors, lexical, strict=True):
        assert vector.indices == sorted(want) and all(i < encoder.vocabulary_size for i in vector.indices)
        np.testing.assert_allclose(vector.values, [want[i] for i in vector.indices], atol=1e-5)
    assert encoder.embed_query(TEXTS[0]) == vectors[0]
    fingerprint = encoder.fingerprint()
    assert fingerprint["kind"] == "bge-m3-sparse" and fingerprint["head_digest"] == m3.heads.digest


def test_onnx_encoder_runs_the_heads_alike(m3_dir: Path, m3, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    onnx = embedkit.load(m3_dir, device="cpu", backend="onnx", onnx_cache_dir=tmp_path)
    assert onnx.backend == "onnx"
    ours, theirs = onnx.embed_all(TEXTS), m3.embed_all(TEXTS)
    assert ours.lexical is not None and theirs.lexical is not None
    assert ours.multivector is not None and theirs.multivector is not None
    assert np.abs(ours.dense - theirs.dense).max() < 1e-5
    assert_lexical_close(ours.lexical, theirs.lexical)
    assert_multivectors_close(ours.multivector, theirs.multivector)


def test_a_model_without_heads_says_so(tiny_bert_dir: Path) -> None:
    plain = embedkit.load(tiny_bert_dir, device="cpu", backend="torch")
    assert plain.heads is None and plain.embed_all(["a b"]).multivector is None
    with pytest.raises(InputError, match=r"colbert_linear\.pt"):
        plain.embed_multivector(["a b"])
    with pytest.raises(InputError, match=r"sparse_linear\.pt"):
        plain.embed_lexical(["a b"])


@pytest.mark.parametrize(
    ("name", "state", "match"),
    [
        ("sparse_linear.pt", {"weight": torch.zeros(2, 32), "bias": torch.zeros(2)}, "weight \\(2, 32\\)"),
        ("sparse_linear.pt", {"weight": torch.zeros(1, 16), "bias": torch.zeros(1)}, "32-wide"),
        ("colbert_linear.pt", {"weight": torch.zeros(32, 32)}, "'weight', 'bias'"),
        ("colbert_linear.pt", {"weight": torch.zeros(32, 32), "bias": torch.zeros(8)}, "bias \\(8,\\)"),
    ],
)
def test_malformed_heads_are_refused_naming_the_file(
    tmp_path: Path, minilm_dir: Path, name: str, state: dict, match: str
) -> None:
    model_dir = write_tiny_bge_m3(tmp_path / "m3", minilm_dir)
    torch.save(state, model_dir / name)
    with pytest.raises(ModelLoadError, match=f"{name}.*{match}"):
        embedkit.load(model_dir, device="cpu", backend="torch")


class _Evil:
    def __reduce__(self):  # a pickle that would run code when unpickled without weights_only
        return (print, ("unpickled!",))


def test_heads_are_never_unpickled_as_objects(tmp_path: Path, minilm_dir: Path) -> None:
    model_dir = write_tiny_bge_m3(tmp_path / "m3", minilm_dir)
    (model_dir / "colbert_linear.pt").write_bytes(pickle.dumps({"weight": _Evil(), "bias": _Evil()}, protocol=2))
    with pytest.raises(ModelLoadError, match=r"colbert_linear\.pt: cannot read"):
        embedkit.load(model_dir, device="cpu", backend="torch")


def test_safetensors_heads_are_read_too(tmp_path: Path, minilm_dir: Path, m3_dir: Path, m3) -> None:
    from safetensors.torch import save_file

    model_dir = write_tiny_bge_m3(tmp_path / "m3", minilm_dir, seed=7)
    for stem in ("sparse_linear", "colbert_linear"):
        save_file(torch.load(model_dir / f"{stem}.pt", weights_only=True), str(model_dir / f"{stem}.safetensors"))
        (model_dir / f"{stem}.pt").unlink()
    other = embedkit.load(model_dir, device="cpu", backend="torch")
    assert_multivectors_close(other.embed_multivector(TEXTS), m3.embed_multivector(TEXTS))

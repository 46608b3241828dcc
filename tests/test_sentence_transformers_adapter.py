"""Embedder.to_sentence_transformer / Reranker.to_cross_encoder: sentence-transformers models running on embzoo give
what the native sentence-transformers model loaded from the same folder gives (the independent reference), for
every encode / predict option, in fp32."""

import ast
import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import add_dense, write_st_layout
from sentence_transformers import CrossEncoder, MultiVectorEncoder, SentenceTransformer, SparseEncoder
from test_colbert import DOCS as COLBERT_DOCS
from test_colbert import QUERIES as COLBERT_QUERIES
from test_colbert import pylate_folder
from test_rerank import DOCS, PAIRS, QUERY, bert_checkpoint
from test_splade import splade_folder
from test_yes_no_rerankers import DOCS as YES_NO_DOCS
from test_yes_no_rerankers import (
    checkpoint,  # noqa: F401  (the fixture)
    load_case,
    reference_scores,
)
from transformers import BertConfig, BertModel

import embzoo

TEXTS = ["what is rope?", "a", "Rotary position embeddings rotate query and key vectors. " * 4, "x y z", "naïve café"]
TANH = "torch.nn.modules.activation.Tanh"
PROMPTS = {"query": "search query: ", "document": "passage: "}


def native(cls, folder):
    return cls(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"})


def token_states(model, texts):
    return model.encode(texts, output_value="token_embeddings")


def assert_close(ours, theirs, atol=1e-5):
    np.testing.assert_allclose(np.asarray(ours, dtype=np.float32), np.asarray(theirs, dtype=np.float32), atol=atol)


@pytest.fixture(scope="module")
def minilm():
    """The bundled all-MiniLM-L6-v2 on embzoo as a SentenceTransformer, and sentence-transformers' own."""
    st = embzoo.load(device="cpu").to_sentence_transformer()
    return st, SentenceTransformer(str(embzoo.catalog.bundled_model_path()), device="cpu")


def test_minilm_is_a_sentence_transformer_with_its_settings(minilm):
    st, ref = minilm
    assert type(st) is SentenceTransformer and [type(m).__name__ for m in st] == ["EmbzooModule", "Normalize"]
    assert st.max_seq_length == ref.max_seq_length == 256
    assert st.get_embedding_dimension() == ref.get_embedding_dimension() == 384
    assert st.similarity_fn_name == ref.similarity_fn_name == "cosine" and st.prompts == ref.prompts
    assert st.device == torch.device("cpu")


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"batch_size": 2},
        {"normalize_embeddings": True, "batch_size": 3},
        {"truncate_dim": 8},
        {"precision": "ubinary"},
        {"prompt": "query: "},
        {"show_progress_bar": True},
    ],
)
def test_minilm_encode_matches_sentence_transformers(minilm, options):
    st, ref = minilm
    ours, theirs = st.encode(TEXTS, **options), ref.encode(TEXTS, **options)
    assert isinstance(ours, np.ndarray) and ours.shape == theirs.shape and ours.dtype == theirs.dtype
    assert_close(ours, theirs)


def test_minilm_output_kinds(minilm):
    st, ref = minilm
    ours, theirs = st.encode(TEXTS, convert_to_tensor=True), ref.encode(TEXTS, convert_to_tensor=True)
    assert isinstance(ours, torch.Tensor) and ours.shape == theirs.shape
    assert_close(ours, theirs)
    listed = st.encode(TEXTS, convert_to_numpy=False)
    assert isinstance(listed, list) and all(isinstance(v, torch.Tensor) for v in listed)
    assert_close(torch.stack(listed), theirs)
    assert_close(st.encode(TEXTS[2]), theirs[2])  # one str → one vector
    for a, b in zip(token_states(st, TEXTS), token_states(ref, TEXTS), strict=True):
        assert a.shape == b.shape
        assert_close(a, b)
    ours, theirs = st.encode(TEXTS, output_value=None), ref.encode(TEXTS, output_value=None)
    for a, b in zip(ours, theirs, strict=True):  # per text, padded to its batch's width (padding states differ)
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["attention_mask"], b["attention_mask"])
        assert_close(a["sentence_embedding"], b["sentence_embedding"])
        real = a["attention_mask"].bool()
        assert_close(a["token_embeddings"][real], b["token_embeddings"][real])
    # int8 ranges come from the vectors themselves: a value on a rounding boundary may land one step apart
    assert np.abs(st.encode(TEXTS, precision="int8").astype(int) - ref.encode(TEXTS, precision="int8")).max() <= 1
    vectors = st.encode(TEXTS)
    assert_close(st.similarity(vectors, vectors), ref.similarity(vectors, vectors))


def test_show_progress_bar(minilm, capsys):
    minilm[0].encode(TEXTS, batch_size=2, show_progress_bar=True)
    assert "Batches" in capsys.readouterr().err


def test_max_seq_length_is_settable_on_the_copy_only(minilm):
    model = embzoo.load(device="cpu")
    st, ref = model.to_sentence_transformer(), SentenceTransformer(str(embzoo.catalog.bundled_model_path()))
    st.max_seq_length = ref.max_seq_length = 6
    assert st.max_seq_length == 6 and model.max_seq_length == 256
    ours = token_states(st, TEXTS)
    assert max(len(t) for t in ours) == 6
    assert_close(st.encode(TEXTS), ref.encode(TEXTS))
    assert_close(model.encode(TEXTS), minilm[1].encode(TEXTS))  # the embedder still truncates at 256
    with pytest.raises(ValueError, match="512"):
        st.max_seq_length = 10_000


def test_weights_are_shared_and_move_together():
    model = embzoo.load(device="cpu")
    st = model.to_sentence_transformer()
    assert st[0].model is model.model
    st.to(torch.float64).to(torch.float32)  # torch's .to reaches the embzoo weights
    assert next(model.model.parameters()).dtype == torch.float32


@pytest.fixture
def bert_folder(make_checkpoint):
    """BERT with its prompt left out of the mean pool (INSTRUCTOR's include_prompt=False), a Tanh Dense with bias,
    a bias-free Dense, Normalize, lowercasing, prompts with a default, dot product and truncate_dim."""
    sizes = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
    folder, _ = make_checkpoint(BertModel, BertConfig(**sizes), noise=0.2)
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "include_prompt": False}
    settings = dict(prompts=PROMPTS, default_prompt_name="query", similarity_fn_name="dot", truncate_dim=12)
    write_st_layout(folder, pooling, True, 40, **settings)
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40, "do_lower_case": True}))
    add_dense(folder, 2, 32, 24, seed=1, bias=True, activation=TANH)
    add_dense(folder, 3, 24, 16, seed=2)
    return folder


def test_prompts_dense_normalize_and_settings_match_sentence_transformers(bert_folder):
    st, ref = embzoo.load(bert_folder, device="cpu").to_sentence_transformer(), native(SentenceTransformer, bert_folder)
    assert [type(m).__name__ for m in st] == ["EmbzooModule", "Normalize"]
    assert st.prompts == ref.prompts and st.default_prompt_name == ref.default_prompt_name == "query"
    assert st.similarity_fn_name == ref.similarity_fn_name == "dot"
    assert st.truncate_dim == ref.truncate_dim == 12 and st.get_embedding_dimension() == 12
    assert st.max_seq_length == ref.max_seq_length == 40
    texts = [*TEXTS, "UPPER Case", "long " * 60]  # the last one is truncated
    for options in (
        {},  # the default prompt, left out of the pool
        {"prompt_name": "document"},
        {"prompt": "Represent this: "},
        {"prompt": ""},
        {"truncate_dim": None, "normalize_embeddings": True},
        {"truncate_dim": 4, "batch_size": 2},
    ):
        ours, theirs = st.encode(texts, **options), ref.encode(texts, **options)
        assert ours.shape == theirs.shape
        assert_close(ours, theirs)
    assert_close(st.encode_query(texts), ref.encode_query(texts))
    assert_close(st.encode_document(texts), ref.encode_document(texts))
    for a, b in zip(token_states(st, texts), token_states(ref, texts), strict=True):
        assert_close(a, b)
    vectors = st.encode(texts)
    assert_close(st.similarity(vectors, vectors), ref.similarity(vectors, vectors), atol=1e-4)


def test_saving_is_refused_naming_embzoo_export(bert_folder, tmp_path):
    st = embzoo.load(bert_folder, device="cpu").to_sentence_transformer()
    with pytest.raises(ValueError, match=f"embzoo export DST --model {bert_folder} --format sentence-transformers"):
        st.save(str(tmp_path / "saved"))
    with pytest.raises(ValueError, match="embzoo export"):
        st.save_pretrained(str(tmp_path / "saved"))
    assert not (tmp_path / "saved").exists()  # refused before sentence-transformers writes its own files


def test_cross_encoder_predict_and_rank_match_sentence_transformers(make_checkpoint):
    folder, _ = bert_checkpoint(make_checkpoint)
    ce, ref = embzoo.load(folder, device="cpu").to_cross_encoder(), CrossEncoder(str(folder), device="cpu")
    assert type(ce) is CrossEncoder and ce.num_labels == 1 and ce.max_seq_length == 64  # the position table's
    assert_close(ce.predict(PAIRS), ref.predict(PAIRS))
    identity = torch.nn.Identity()
    assert_close(ce.predict(PAIRS, batch_size=3, activation_fn=identity), ref.predict(PAIRS, activation_fn=identity))
    ours = ce.predict(PAIRS, convert_to_tensor=True, prompt="about rope: ")
    assert isinstance(ours, torch.Tensor)
    assert_close(ours, ref.predict(PAIRS, convert_to_tensor=True, prompt="about rope: "))
    assert_close(ce.predict(PAIRS[0]), ref.predict(PAIRS[0]))
    ranked, theirs = (m.rank(QUERY, DOCS, return_documents=True, top_k=3) for m in (ce, ref))
    assert [(r["corpus_id"], r["text"]) for r in ranked] == [(r["corpus_id"], r["text"]) for r in theirs]
    assert_close([r["score"] for r in ranked], [r["score"] for r in theirs])
    with pytest.raises(ValueError, match="is fixed here"):
        ce.max_seq_length = 20


def test_cross_encoder_keeps_the_rerankers_activation(make_checkpoint):
    identity = "torch.nn.modules.linear.Identity"
    folder, _ = bert_checkpoint(make_checkpoint, sbert_ce_default_activation_function=identity)
    ce = embzoo.load(folder, device="cpu").to_cross_encoder()
    assert isinstance(ce.activation_fn, torch.nn.Identity)
    assert_close(ce.predict(PAIRS), CrossEncoder(str(folder), device="cpu").predict(PAIRS))


def test_generative_reranker_as_a_cross_encoder_scores_its_template(checkpoint):  # noqa: F811
    """A yes/no reranker's CrossEncoder scores embzoo's byte-exact prompt template (sentence-transformers' own
    CrossEncoder would score the bare pair), against transformers' full-vocabulary logits."""
    reranker, model, tok, reference, length = load_case(checkpoint, "qwen3_tied")
    pairs = [(QUERY, d) for d in YES_NO_DOCS]
    ids, (positive, negative) = reference(tok, pairs, None, length)
    ce = reranker.to_cross_encoder()
    got = ce.predict(pairs, batch_size=2, activation_fn=torch.nn.Identity())
    assert_close(got, reference_scores(model, ids, positive, negative), atol=1e-4)
    assert_close(ce.predict(pairs), torch.sigmoid(torch.from_numpy(got)))  # Qwen3's card: the "yes" probability


def test_splade_is_a_sparse_encoder(make_checkpoint):
    folder, _ = splade_folder(make_checkpoint)
    # a folder without it would be read as a SentenceTransformer and converted (a SparseAutoEncoder appended)
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "SparseEncoder"}))
    se, ref = embzoo.load(folder, device="cpu").to_sentence_transformer(), native(SparseEncoder, folder)
    assert type(se) is SparseEncoder and se.get_embedding_dimension() == ref.get_embedding_dimension() == 30522
    ours, theirs = se.encode(TEXTS, batch_size=2), ref.encode(TEXTS)
    assert ours.is_sparse and ours.shape == theirs.shape
    assert_close(ours.to_dense(), theirs.to_dense())
    top = se.encode(TEXTS, max_active_dims=5, convert_to_sparse_tensor=False)
    assert not top.is_sparse and ((top > 0).sum(dim=1) <= 5).all()
    assert_close(top, ref.encode(TEXTS, max_active_dims=5, convert_to_sparse_tensor=False))
    assert_close(se.encode_query(TEXTS).to_dense(), ref.encode_query(TEXTS).to_dense())
    decoded, want = se.decode(ours[0], top_k=3), ref.decode(theirs[0], top_k=3)
    assert [token for token, _ in decoded] == [token for token, _ in want]
    assert_close([w for _, w in decoded], [w for _, w in want])
    np.testing.assert_allclose(se.similarity(ours, ours), ref.similarity(theirs, theirs), rtol=1e-6)  # dots ~1e3


def test_colbert_is_a_multi_vector_encoder(make_checkpoint):
    folder, _, _ = pylate_folder(make_checkpoint)
    model = embzoo.load(folder, device="cpu")
    with pytest.raises(ValueError, match="late.encode"):  # a ColBERT input's tokens depend on its role
        model.tokenize(COLBERT_DOCS)
    mve, ref = model.to_sentence_transformer(), native(MultiVectorEncoder, folder)
    assert type(mve) is MultiVectorEncoder and mve.similarity_fn_name == "maxsim"
    for ours, theirs in (
        (mve.encode_query(COLBERT_QUERIES), ref.encode_query(COLBERT_QUERIES)),
        (mve.encode_document(COLBERT_DOCS, batch_size=2), ref.encode_document(COLBERT_DOCS)),
    ):
        for a, b in zip(ours, theirs, strict=True):
            assert a.shape == b.shape
            assert_close(a, b)
    q, d = mve.encode_query(COLBERT_QUERIES), mve.encode_document(COLBERT_DOCS)
    assert_close(mve.similarity(q, d), ref.similarity(q, d), atol=1e-4)
    with pytest.raises(ValueError, match="encode_query or encode_document"):
        mve.encode(COLBERT_DOCS)


def test_task_adapters_follow_encodes_task(make_checkpoint):
    """jina-embeddings-v3's card: encode(texts, task=t, prompt_name=t); the task picks the LoRA adapter (not silently
    the base weights), a role from encode_query / encode_document runs the base weights, an unknown task is refused."""
    from families.test_jina_embeddings_v3 import SMALL, build_native, lora_factors, to_original

    folder, ref = build_native(make_checkpoint)
    folder = to_original(folder, ref.state_dict(), lora_factors(ref.state_dict(), SMALL["num_hidden_layers"]))
    jina = embzoo.load(folder, device="cpu")
    st = jina.to_sentence_transformer()
    assert st.get_model_kwargs() == ["task"]
    for task in ("retrieval.query", "text-matching"):
        ours = st.encode(TEXTS, task=task, prompt=jina.task_instructions[task])
        assert_close(ours, jina.encode(TEXTS, task=task))
        assert not np.allclose(ours, jina.encode(TEXTS, prompt=jina.task_instructions[task]), atol=1e-3)
    assert_close(st.encode_query(TEXTS), jina.encode_query(TEXTS))
    assert_close(st.encode_document(TEXTS), jina.encode_document(TEXTS))
    with pytest.raises(ValueError, match="unknown task 'retrieval'"):
        st.encode(TEXTS, task="retrieval")


def test_sentence_transformers_stays_an_optional_import():
    """Only the integration module imports sentence-transformers, and no module imports it at load time."""
    package = Path(embzoo.__file__).parent
    integration = package / "integrations" / "sentence_transformers.py"
    for path in package.rglob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module-level statements: run by `import embzoo`
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("embzoo.integrations.sentence_transformers") for n in names), path
            if path != integration:
                assert not any(n.startswith("sentence_transformers") for n in names), path


def test_an_older_sentence_transformers_is_named(monkeypatch):
    """sentence-transformers 5 has no MultiVectorEncoder: the error names the version and the extra to install."""
    older = types.ModuleType("sentence_transformers")
    older.SentenceTransformer = SentenceTransformer
    monkeypatch.setitem(sys.modules, "sentence_transformers", older)
    monkeypatch.delitem(sys.modules, "embzoo.integrations.sentence_transformers", raising=False)
    with pytest.raises(
        ImportError, match=r"needs sentence-transformers>=6 .*pip install 'embzoo\[sentence-transformers\]'"
    ):
        embzoo.load(device="cpu").to_sentence_transformer()


@pytest.mark.gpu
def test_moves_to_cuda_with_its_weights():
    model = embzoo.load(device="cpu", dtype="float32")
    st = model.to_sentence_transformer().to("cuda")
    assert model.device.type == "cuda" and st.device.type == "cuda"
    ref = SentenceTransformer(str(embzoo.catalog.bundled_model_path()), device="cuda")
    assert_close(st.encode(TEXTS, convert_to_tensor=True).cpu(), ref.encode(TEXTS, convert_to_tensor=True).cpu(), 1e-4)

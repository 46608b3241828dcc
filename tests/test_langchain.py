"""embzoo.integrations.langchain: EmbzooEmbeddings against Embedder.encode_query / encode_document and
sentence-transformers' prompts, EmbzooRerank against a transformers classifier's scores and an embedder's rank, the
async calls, and a small retrieval pipeline on LangChain's InMemoryVectorStore."""

import asyncio
import threading
import time

import numpy as np
import pytest
import torch
from conftest import reference_logits, run_with_ticks, slowed
from test_encode import tiny_folder
from test_rerank import DOCS as TEXTS
from test_rerank import QUERY, bert_checkpoint

import embzoo

pytest.importorskip("langchain_core")
from langchain_core.documents import Document  # noqa: E402
from langchain_core.vectorstores import InMemoryVectorStore  # noqa: E402

from embzoo.integrations.langchain import EmbzooEmbeddings, EmbzooRerank  # noqa: E402

PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def minilm():
    return embzoo.load(device="cpu")


@pytest.fixture
def prompted(make_checkpoint):
    """A tiny normalizing mean-pooling folder whose query and document prompts differ."""
    return tiny_folder(make_checkpoint, {"pooling_mode": "mean"}, normalize=True, prompts=PROMPTS)


def test_vectors_are_the_embedders_query_and_document_vectors(minilm):
    lc = EmbzooEmbeddings(client=minilm)
    np.testing.assert_allclose(lc.embed_documents(TEXTS), minilm.encode_document(TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(lc.embed_query(QUERY), minilm.encode_query(QUERY), atol=1e-6, rtol=0)
    assert isinstance(lc.embed_query(QUERY)[0], float) and len(lc.embed_documents(TEXTS)) == len(TEXTS)


def test_prompts_are_the_models_and_match_sentence_transformers(prompted):
    from sentence_transformers import SentenceTransformer

    lc = EmbzooEmbeddings(model=str(prompted), model_kwargs={"device": "cpu"})  # model: model_name's alias
    st = SentenceTransformer(str(prompted), device="cpu")
    docs, query = lc.embed_documents(TEXTS), lc.embed_query(QUERY)
    np.testing.assert_allclose(docs, st.encode(TEXTS, prompt_name="document"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(query, st.encode(QUERY, prompt_name="query"), atol=1e-5, rtol=0)
    np.testing.assert_allclose(docs, lc.client.encode_document(TEXTS), atol=1e-6, rtol=0)
    assert not np.allclose(query, lc.embed_documents([QUERY])[0], atol=1e-3)  # the two prompts differ


def test_encode_kwargs_apply_and_query_kwargs_replace_them(prompted):
    """As HuggingFaceEmbeddings: encode_kwargs serve queries too unless query_encode_kwargs are given; the
    sentence-transformers spelling normalize_embeddings is normalize."""
    model = embzoo.load(prompted, device="cpu")
    lc = EmbzooEmbeddings(client=model, encode_kwargs={"dimensions": 8, "normalize_embeddings": False})
    np.testing.assert_allclose(
        lc.embed_query(QUERY), model.encode_query(QUERY, dimensions=8, normalize=False), atol=1e-6, rtol=0
    )
    lc = EmbzooEmbeddings(client=model, encode_kwargs={"dimensions": 8}, query_encode_kwargs={"prompt": "q: "})
    np.testing.assert_allclose(lc.embed_query(QUERY), model.encode(QUERY, prompt="q: "), atol=1e-6, rtol=0)
    np.testing.assert_allclose(lc.embed_documents(TEXTS), model.encode_document(TEXTS, dimensions=8), atol=1e-6, rtol=0)


def test_bad_settings_say_what_to_do(minilm, make_checkpoint):
    with pytest.raises(ValueError, match="pass batch_tokens"):
        EmbzooEmbeddings(client=minilm, encode_kwargs={"batch_size": 32})
    with pytest.raises(ValueError, match=r"\['output'\] not accepted"):
        EmbzooEmbeddings(client=minilm, query_encode_kwargs={"output": "tokens"})
    with pytest.raises(ValueError, match="not both"):
        EmbzooEmbeddings(client=minilm, encode_kwargs={"normalize": True, "normalize_embeddings": True})
    with pytest.raises(ValueError, match="client .* or model_name"):
        EmbzooEmbeddings(client=minilm, model_name="other")
    reranker = embzoo.load(bert_checkpoint(make_checkpoint)[0], device="cpu")
    with pytest.raises(TypeError, match="wraps an embzoo Embedder; got Reranker"):
        EmbzooEmbeddings(client=reranker)
    with pytest.raises(ValueError, match=r"rank_kwargs: \['normalize'\] not accepted"):
        EmbzooRerank(client=reranker, rank_kwargs={"normalize": True})


def test_async_calls_leave_the_event_loop_running(minilm, monkeypatch):
    lc = EmbzooEmbeddings(client=minilm)
    want_docs, want_query = lc.embed_documents(TEXTS), lc.embed_query(QUERY)
    slowed(monkeypatch, minilm, "encode_document", 0.2)
    (docs, query), ticks = run_with_ticks(lambda: asyncio.gather(lc.aembed_documents(TEXTS), lc.aembed_query(QUERY)))
    assert ticks >= 5  # the loop ran while the documents were encoded
    np.testing.assert_allclose(docs, want_docs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(query, want_query, atol=1e-6, rtol=0)


def test_calls_on_one_model_take_turns(minilm, monkeypatch):
    """LangChain runs async calls on a pool of threads: one model runs one call at a time."""
    lc = EmbzooEmbeddings(client=minilm)
    running, most = 0, 0
    guard = threading.Lock()
    encode = minilm.encode_document

    def counted(*args, **kwargs):
        nonlocal running, most
        with guard:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with guard:
            running -= 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(minilm, "encode_document", counted)

    async def run():
        return await asyncio.gather(*(lc.aembed_documents([t]) for t in TEXTS))

    results = asyncio.run(run())
    assert most == 1
    for text, got in zip(TEXTS, results, strict=True):
        np.testing.assert_allclose(got, lc.embed_documents([text]), atol=1e-6, rtol=0)


def test_rerank_scores_are_the_cross_encoders(make_checkpoint):
    folder, reference = bert_checkpoint(make_checkpoint)
    docs = [Document(t, metadata={"source": i}) for i, t in enumerate(TEXTS)]
    compressor = EmbzooRerank(model_name=str(folder), model_kwargs={"device": "cpu"}, top_n=3)
    got = compressor.compress_documents(docs, QUERY)
    want = torch.sigmoid(reference_logits(folder, reference, [(QUERY, t) for t in TEXTS], 64)).numpy()
    order = np.argsort(-want, kind="stable")[:3]
    assert [d.metadata["source"] for d in got] == order.tolist()
    assert [d.page_content for d in got] == [TEXTS[i] for i in order]
    np.testing.assert_allclose([d.metadata["relevance_score"] for d in got], want[order], atol=1e-5, rtol=0)
    assert docs[order[0]].metadata == {"source": int(order[0])}  # the caller's documents are left as they were
    ranked = compressor.client.rank(QUERY, TEXTS, top_k=3)
    assert [d.metadata["relevance_score"] for d in got] == [r["score"] for r in ranked]
    raw = EmbzooRerank(client=compressor.client, top_n=None, rank_kwargs={"activation": "none"})
    assert len(raw.compress_documents(docs, QUERY)) == len(docs)
    assert raw.compress_documents([], QUERY) == []


def test_retrieval_pipeline_with_an_embedder_as_reranker(minilm):
    texts = ["The cheetah is the fastest land animal.", "Paris is the capital of France.", "Rust has no GC."]
    store = InMemoryVectorStore.from_texts(texts, embedding=EmbzooEmbeddings(client=minilm))
    question = "Which city is France's capital?"
    hits = store.similarity_search(question, k=3)
    assert hits[0].page_content == texts[1]
    reranked = EmbzooRerank(client=minilm, top_n=1).compress_documents(hits, question)
    assert [d.page_content for d in reranked] == [texts[1]]
    cosine = minilm.score([(question, texts[1])])[0]
    assert reranked[0].metadata["relevance_score"] == pytest.approx(float(cosine), abs=1e-6)

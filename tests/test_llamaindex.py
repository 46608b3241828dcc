"""embzoo.integrations.llamaindex: EmbzooEmbedding against Embedder.encode_query / encode_document and
sentence-transformers' prompts, EmbzooRerank against a transformers classifier's scores, the async calls, and a small
retrieval pipeline on a VectorStoreIndex with LlamaIndex's in-memory store (no LLM)."""

import asyncio

import numpy as np
import pytest
import torch
from conftest import reference_logits, run_with_ticks, slowed
from test_encode import tiny_folder
from test_rerank import DOCS as TEXTS
from test_rerank import QUERY, bert_checkpoint

import embzoo

pytest.importorskip("llama_index.core")
from llama_index.core import VectorStoreIndex  # noqa: E402
from llama_index.core.schema import MetadataMode, NodeWithScore, TextNode  # noqa: E402

from embzoo.integrations.llamaindex import EmbzooEmbedding, EmbzooRerank  # noqa: E402

PROMPTS = {"query": "query: ", "document": "passage: "}


@pytest.fixture(scope="module")
def minilm():
    return embzoo.load(device="cpu")


def test_vectors_are_the_embedders_query_and_document_vectors(minilm):
    li = EmbzooEmbedding(client=minilm, embed_batch_size=3)  # texts go to the model 3 at a time
    np.testing.assert_allclose(li.get_text_embedding_batch(TEXTS), minilm.encode_document(TEXTS), atol=1e-6, rtol=0)
    np.testing.assert_allclose(li.get_text_embedding(TEXTS[0]), minilm.encode_document(TEXTS[0]), atol=1e-6, rtol=0)
    np.testing.assert_allclose(li.get_query_embedding(QUERY), minilm.encode_query(QUERY), atol=1e-6, rtol=0)


def test_instructions_default_to_the_models_prompts(make_checkpoint):
    from sentence_transformers import SentenceTransformer

    folder = tiny_folder(make_checkpoint, {"pooling_mode": "mean"}, normalize=True, prompts=PROMPTS)
    st = SentenceTransformer(str(folder), device="cpu")
    li = EmbzooEmbedding(model_name=str(folder), model_kwargs={"device": "cpu"})
    np.testing.assert_allclose(li.get_query_embedding(QUERY), st.encode(QUERY, prompt="query: "), atol=1e-5, rtol=0)
    docs = li.get_text_embedding_batch(TEXTS)
    np.testing.assert_allclose(docs, st.encode(TEXTS, prompt="passage: "), atol=1e-5, rtol=0)
    mine = EmbzooEmbedding(client=li.client, query_instruction="Represent this question: ", text_instruction="")
    np.testing.assert_allclose(
        mine.get_query_embedding(QUERY), st.encode(QUERY, prompt="Represent this question: "), atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(mine.get_text_embedding_batch(TEXTS), st.encode(TEXTS), atol=1e-5, rtol=0)


def test_normalize_and_dimensions(minilm):
    li = EmbzooEmbedding(client=minilm, normalize=False, dimensions=16)
    got = li.get_text_embedding_batch(TEXTS)
    np.testing.assert_allclose(got, minilm.encode_document(TEXTS, normalize=False, dimensions=16), atol=1e-6, rtol=0)
    assert np.shape(got) == (len(TEXTS), 16)


def test_async_calls_leave_the_event_loop_running(minilm, monkeypatch):
    li = EmbzooEmbedding(client=minilm, embed_batch_size=2)
    want_docs, want_query = li.get_text_embedding_batch(TEXTS), li.get_query_embedding(QUERY)
    slowed(monkeypatch, minilm, "encode_document", 0.1)
    (docs, query, one), ticks = run_with_ticks(
        lambda: asyncio.gather(
            li.aget_text_embedding_batch(TEXTS), li.aget_query_embedding(QUERY), li.aget_text_embedding(TEXTS[1])
        )
    )
    assert ticks >= 5
    np.testing.assert_allclose(docs, want_docs, atol=1e-6, rtol=0)
    np.testing.assert_allclose(query, want_query, atol=1e-6, rtol=0)
    np.testing.assert_allclose(one, want_docs[1], atol=1e-6, rtol=0)


def test_rerank_scores_are_the_cross_encoders(make_checkpoint):
    folder, reference = bert_checkpoint(make_checkpoint)
    nodes = [NodeWithScore(node=TextNode(text=t, id_=f"n{i}"), score=0.5 + i) for i, t in enumerate(TEXTS)]
    rerank = EmbzooRerank(model_name=str(folder), model_kwargs={"device": "cpu"}, top_n=3, keep_retrieval_score=True)
    contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]  # read before retrieval_score
    got = rerank.postprocess_nodes(nodes, query_str=QUERY)
    want = torch.sigmoid(reference_logits(folder, reference, [(QUERY, c) for c in contents], 64)).numpy()
    order = np.argsort(-want, kind="stable")[:3]
    assert [n.node.node_id for n in got] == [f"n{i}" for i in order]
    np.testing.assert_allclose([n.score for n in got], want[order], atol=1e-5, rtol=0)
    assert [n.node.metadata["retrieval_score"] for n in got] == [0.5 + i for i in order]
    assert [n.score for n in nodes] == [0.5 + i for i in range(len(TEXTS))]  # the caller's scores are kept
    assert rerank.postprocess_nodes([], query_str=QUERY) == []
    with pytest.raises(ValueError, match="needs the query"):
        rerank.postprocess_nodes(nodes)
    with pytest.raises(TypeError, match="wraps an embzoo Embedder; got Reranker"):
        EmbzooEmbedding(client=rerank.client)


def test_retrieval_pipeline_on_an_in_memory_index(minilm):
    texts = ["The cheetah is the fastest land animal.", "Paris is the capital of France.", "Rust has no GC."]
    nodes = [TextNode(text=t, id_=f"n{i}") for i, t in enumerate(texts)]
    index = VectorStoreIndex(nodes, embed_model=EmbzooEmbedding(client=minilm), use_async=True)
    question = "Which city is France's capital?"
    retriever = index.as_retriever(similarity_top_k=3)
    hits = retriever.retrieve(question)
    assert hits[0].node.node_id == "n1"
    reranked = asyncio.run(EmbzooRerank(client=minilm, top_n=1).apostprocess_nodes(hits, query_str=question))
    assert [n.node.node_id for n in reranked] == ["n1"]
    assert reranked[0].score == pytest.approx(float(minilm.score([(question, texts[1])])[0]), abs=1e-6)

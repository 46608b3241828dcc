"""LLM embedders end to end against sentence-transformers on tiny sentence-transformers folders:
an EmbeddingGemma-like model (bidirectional Gemma3, mean pooling, two bias-free Identity Dense layers,
Normalize, task prompts) and a Qwen3-Embedding-like one (causal, last token, Matryoshka)."""

import numpy as np
import pytest
from conftest import TINY_GEMMA3, TINY_QWEN3, add_dense, mlp_rows, write_st_layout
from sentence_transformers import SentenceTransformer
from transformers import Gemma3TextConfig, Gemma3TextModel, Qwen3Config, Qwen3Model

import embzoo

TEXTS = ["what is rope?", "a", "rotary position embeddings rotate query and key vectors by position", "x y z"]
GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


@pytest.fixture
def gemma_folder(make_checkpoint):
    config = Gemma3TextConfig(**TINY_GEMMA3)
    folder, _ = make_checkpoint(Gemma3TextModel, config, noise=0.5)
    write_st_layout(folder, {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True}, True, 64,
                    prompts=GEMMA_PROMPTS)  # fmt: skip
    add_dense(folder, 2, 32, 96, seed=1)
    add_dense(folder, 3, 96, 32, seed=2)
    return folder


@pytest.fixture
def qwen3_folder(make_checkpoint):
    folder, _ = make_checkpoint(Qwen3Model, Qwen3Config(**TINY_QWEN3), noise=0.5)
    prompts = {"query": "Instruct: Given a web search query, retrieve relevant passages\nQuery:", "document": ""}
    write_st_layout(folder, {"word_embedding_dimension": 32, "pooling_mode_lasttoken": True}, True, 64, prompts=prompts)
    return folder


def st_model(folder) -> SentenceTransformer:
    return SentenceTransformer(str(folder), device="cpu", model_kwargs={"attn_implementation": "eager"})


@pytest.mark.parametrize("prompt_name", ["query", "document"])
def test_embeddinggemma_like_matches_sentence_transformers(gemma_folder, prompt_name):
    ours = embzoo.load(gemma_folder, device="cpu").encode(TEXTS, prompt_name=prompt_name)
    ref = st_model(gemma_folder).encode(TEXTS, prompt_name=prompt_name)
    assert ours.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_embeddinggemma_like_refuses_nothing_and_truncates_then_normalizes(gemma_folder):
    ours = embzoo.load(gemma_folder, device="cpu").encode(TEXTS, prompt_name="query", dimensions=16)
    ref = st_model(gemma_folder).encode(TEXTS, prompt_name="query", truncate_dim=16, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_gemma_refuses_float16(gemma_folder):
    with pytest.raises(ValueError, match="overflow float16; load it with dtype='bfloat16'"):
        embzoo.load(gemma_folder, device="cpu", dtype="float16")


def test_qwen3_embedding_like_matches_sentence_transformers(qwen3_folder):
    model = st_model(qwen3_folder)
    for padding_side in ("left", "right"):  # last-token pooling must not depend on it
        model.tokenizer.padding_side = padding_side
        ref = model.encode(TEXTS, prompt_name="query")
        ours = embzoo.load(qwen3_folder)
        with mlp_rows(ours.model.backbone) as rows:
            np.testing.assert_allclose(ours.encode(TEXTS, prompt_name="query"), ref, atol=1e-5)
        assert sum(rows["last"]) == len(TEXTS) < sum(rows["first"])  # causal: the last layer runs the last tokens
    ours = embzoo.load(qwen3_folder).encode(TEXTS, dimensions=8)
    np.testing.assert_allclose(ours, model.encode(TEXTS, truncate_dim=8, normalize_embeddings=True), atol=1e-5)

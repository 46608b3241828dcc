"""The real all-MiniLM-L6-v2 weights against sentence-transformers (the reference pipeline)."""

import numpy as np
import pytest
import torch

import embzoo

LONG = " ".join(f"token{i} and some ordinary words about topic {i % 7}" for i in range(60))  # 300+ words
TEXTS = [
    "",
    "hello",
    "The quick brown fox jumps over the lazy dog.",
    "Ünïcödé: 日本語のテキスト, emojis 🙂 and Ελληνικά",
    "   leading and trailing spaces   ",
    LONG,
    "A man is eating food.",
    "what is rotary position embedding?",
]


@pytest.fixture(scope="module")
def ours():
    return embzoo.load(device="cpu")


@pytest.fixture(scope="module")
def reference(minilm_dir):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(minilm_dir), device="cpu")


def test_long_text_is_over_the_limit(ours):
    assert len(LONG.split()) > 300
    assert len(ours.tokenizer.backend.encode(LONG).overflowing) > 0


def test_sentence_vectors_match_sentence_transformers(ours, reference, caplog):
    got = ours.encode(TEXTS)
    assert "1 of 8 inputs were longer than 256 tokens" in caplog.text
    want = reference.encode(TEXTS, convert_to_numpy=True)
    assert got.shape == want.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_token_states_match_sentence_transformers(ours, reference):
    got = ours.encode(TEXTS, output="tokens")
    want = reference.encode(TEXTS, output_value="token_embeddings")
    for g, w in zip(got, want, strict=True):
        assert g.shape == tuple(w.shape)
        np.testing.assert_allclose(g, w.numpy(), atol=1e-5, rtol=0)


def test_prompt_matches_sentence_transformers(ours, reference):
    got = ours.encode(TEXTS[1:4], prompt="query: ")
    want = reference.encode(TEXTS[1:4], prompt="query: ")
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_batch_invariance(ours):
    """A text's vector does not depend on its batch mates or on the batch size."""
    alone = np.stack([ours.encode(t) for t in TEXTS[:5]])
    together = ours.encode(TEXTS[:5])
    tiny_batches = ours.encode(TEXTS[:5][::-1], batch_tokens=8)[::-1]
    np.testing.assert_allclose(together, alone, atol=1e-6, rtol=0)
    np.testing.assert_allclose(tiny_batches, alone, atol=1e-6, rtol=0)


def test_results_come_back_in_caller_order(ours, monkeypatch):
    monkeypatch.setattr(embzoo.api, "TOKENIZE_CHUNK", 7)  # several tokenization chunks, each re-sorted
    texts = [f"sentence number {i} " * (i % 9 + 1) for i in range(40)]
    vectors = ours.encode(texts, batch_tokens=64)
    for i in (0, 13, 39):
        np.testing.assert_allclose(vectors[i], ours.encode(texts[i]), atol=1e-6)


def test_tensor_output_and_single_text(ours):
    v = ours.encode("hello", convert_to_tensor=True)
    assert isinstance(v, torch.Tensor) and v.shape == (384,) and v.dtype == torch.float32
    assert ours.encode([]).shape == (0, 384)
    assert torch.linalg.vector_norm(v).item() == pytest.approx(1.0, abs=1e-5)


def test_bfloat16_weights_stay_close_to_float32(ours):
    low = embzoo.load(device="cpu", dtype="bfloat16")
    assert next(low.model.backbone.parameters()).dtype == torch.bfloat16
    a, b = ours.encode(TEXTS[1:4]), low.encode(TEXTS[1:4])
    assert b.dtype == np.float32
    assert (np.sum(a * b, axis=1) > 0.99).all()

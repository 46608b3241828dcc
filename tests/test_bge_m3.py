"""BGE-M3's three outputs from one pass (dense CLS, sparse lexical weights, ColBERT vectors) and compute_score,
against a reference written from FlagEmbedding's inference code on transformers' BertModel states."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_st_layout
from transformers import AutoTokenizer, BertConfig, BertModel

import embzoo

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXTS = ["hello world", "", "what is the capital of france? paris, of course.", "ok ok ok ok"]
PAIRS = [("what is bge", "bge is an embedding model"), ("what is bge", "paris"), ("capital of france", "paris")]


@pytest.fixture
def m3(make_checkpoint):
    folder, model = make_checkpoint(BertModel, TINY, noise=0.3)
    write_st_layout(folder, {"pooling_mode_cls_token": True, "word_embedding_dimension": 32}, True, 64)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.eos_token = "[SEP]"  # as XLM-R's </s> is both: FlagEmbedding drops the eos id
    tok.save_pretrained(folder)
    torch.manual_seed(1)  # the Hub files are fp16 state dicts
    heads = {
        "colbert_linear.pt": {"weight": torch.randn(32, 32) * 0.3, "bias": torch.randn(32) * 0.1},
        "sparse_linear.pt": {"weight": torch.randn(1, 32) * 0.3, "bias": torch.tensor([0.5])},  # mostly > 0
    }
    for name, state in heads.items():
        torch.save({k: v.half() for k, v in state.items()}, folder / name)
    return folder, model, {n: {k: v.half().float() for k, v in s.items()} for n, s in heads.items()}


def flag_reference(folder, model, heads, texts):
    """FlagEmbedding's M3 encode: normalized CLS; relu(sparse_linear(h)) max per token id without the cls, eos, pad
    and unk ids and zero weights; normalized colbert_linear(h[1:]) (CLS left out, the last token kept)."""
    tok = AutoTokenizer.from_pretrained(folder)
    named = [getattr(tok, t) for t in ("cls_token", "eos_token", "pad_token", "unk_token")]
    unused = {tok.convert_tokens_to_ids(t) for t in named if t is not None}
    cw, cb = heads["colbert_linear.pt"]["weight"], heads["colbert_linear.pt"]["bias"]
    sw, sb = heads["sparse_linear.pt"]["weight"], heads["sparse_linear.pt"]["bias"]
    dense, lexical, colbert = [], [], []
    with torch.no_grad():
        for text in texts:
            enc = tok(text, truncation=True, max_length=64, return_tensors="pt")
            h = model(**enc).last_hidden_state[0]
            dense.append(F.normalize(h[0], dim=-1))
            weights = {}
            for w, idx in zip(
                torch.relu(h @ sw.T + sb).squeeze(-1).tolist(), enc["input_ids"][0].tolist(), strict=True
            ):
                if idx not in unused and w > 0 and w > weights.get(idx, 0):
                    weights[idx] = w
            lexical.append(weights)
            colbert.append(F.normalize(h[1:] @ cw.T + cb, dim=-1))
    return torch.stack(dense), lexical, colbert


def test_three_outputs_from_one_pass_match_flag_embedding(m3):
    folder, model, heads = m3
    m = embzoo.load(folder)
    assert m.model.outputs == ("sentence", "multivector", "sparse", "tokens")
    out = m.encode(TEXTS, output=["sentence", "sparse", "multivector"])
    dense, lexical, colbert = flag_reference(folder, model, heads, TEXTS)
    assert np.abs(out["sentence"] - dense.numpy()).max() < 1e-5
    assert np.allclose(m.encode(TEXTS), out["sentence"], atol=1e-6)  # the main output is the dense one
    for ours, ref in zip(out["sparse"], lexical, strict=True):
        assert set(ours) == set(ref)  # exactly the special tokens (and zero weights) dropped
        assert max((abs(ours[k] - ref[k]) for k in ref), default=0) < 1e-5
    for ours, ref in zip(out["multivector"], colbert, strict=True):
        assert ours.shape == ref.shape and np.abs(ours - ref.numpy()).max() < 1e-5


def test_sparse_drops_the_special_tokens_only(m3):
    folder, _, _ = m3
    torch.save({"weight": torch.zeros(1, 32), "bias": torch.tensor([0.5])}, folder / "sparse_linear.pt")  # all 0.5
    m = embzoo.load(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    text = "[CLS] [PAD] [UNK] [MASK] hello [SEP] world"
    ids = tok(text)["input_ids"]
    dropped = {tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.unk_token_id}  # cls, eos, pad, unk
    assert dropped <= set(ids) and tok.mask_token_id in ids
    assert m.encode(text, output="sparse") == dict.fromkeys(set(ids) - dropped, 0.5)  # [MASK] stays


def test_compute_score_matches_flag_embedding(m3):
    folder, model, heads = m3
    m = embzoo.load(folder)
    got = m.compute_score(PAIRS, weights_for_different_modes=[0.5, 0.2, 0.3])
    queries, docs = [q for q, _ in PAIRS], [d for _, d in PAIRS]
    qd, ql, qc = flag_reference(folder, model, heads, queries)
    dd, dl, dc = flag_reference(folder, model, heads, docs)
    dense = (qd * dd).sum(-1).numpy()
    sparse = np.array([sum(w * b[t] for t, w in a.items() if t in b) for a, b in zip(ql, dl, strict=True)])
    colbert = np.array([(q @ d.T).max(-1).values.sum().item() / len(q) for q, d in zip(qc, dc, strict=True)])
    expected = {
        "dense": dense,
        "sparse": sparse,
        "colbert": colbert,
        "sparse+dense": (sparse * 0.2 + dense * 0.5) / 0.7,
        "colbert+sparse+dense": (colbert * 0.3 + sparse * 0.2 + dense * 0.5) / 1.0,
    }
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert np.abs(got[key] - value).max() < 1e-5, key
    assert np.allclose(m.score(PAIRS, output="multivector"), colbert, atol=1e-5)
    one = m.compute_score(PAIRS[0])  # one pair → floats, as FlagEmbedding; default weights (1, 1, 1)
    assert (
        isinstance(one["dense"], float) and abs(one["colbert+sparse+dense"] - (dense + sparse + colbert)[0] / 3) < 1e-5
    )
    ranking = m.rank("what is bge", ["paris", "bge is an embedding model"], output="sparse", return_documents=True)
    assert [r["index"] for r in ranking] == list(np.argsort(-sparse[:2][::-1], kind="stable"))
    assert ranking[0]["document"] == ["paris", "bge is an embedding model"][ranking[0]["index"]]


def test_compute_score_needs_the_three_outputs(make_checkpoint):
    folder, _ = make_checkpoint(BertModel, TINY)
    write_st_layout(folder, {"pooling_mode_cls_token": True, "word_embedding_dimension": 32}, True, 64)
    with pytest.raises(ValueError, match="needs dense, sparse and multi-vector outputs"):
        embzoo.load(folder).compute_score(PAIRS)


def test_embzoo_folder_reloads_bit_exactly(m3, tmp_path):
    from conftest import assert_round_trip

    folder, _, _ = m3
    assert_round_trip(folder, tmp_path / "converted", lambda m: tuple(m.compute_score(PAIRS).values()))

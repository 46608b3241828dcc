"""SPLADE (sparse output from a masked-LM head) against a reference from its definition: transformers'
BertForMaskedLM logits → log(1 + relu) → max (or sum) over the text's tokens, in float64."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForMaskedLM, RobertaConfig, RobertaForMaskedLM

import embzoo

TINY = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXTS = ["hello world", "", "a longer sentence with several more words in it, and a comma", "ok ok ok"]


def splade_folder(make_checkpoint, name="splade", tied=True, pooling=None, st_files=True, roberta=False):
    config = (RobertaConfig(**TINY, pad_token_id=0) if roberta else BertConfig(**TINY)) if tied else None
    config = config or BertConfig(**TINY, tie_word_embeddings=False)
    folder, model = make_checkpoint(RobertaForMaskedLM if roberta else BertForMaskedLM, config, name=name, noise=0.3)
    if st_files:
        modules = [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.sparse_encoder.models.MLMTransformer"},
            {
                "idx": 1,
                "name": "1",
                "path": "1_SpladePooling",
                "type": "sentence_transformers.sparse_encoder.models.SpladePooling",
            },
        ]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64}))
        (folder / "1_SpladePooling").mkdir()
        config = {"pooling_strategy": "max", "activation_function": "relu", "word_embedding_dimension": 30522}
        (folder / "1_SpladePooling" / "config.json").write_text(json.dumps(config | (pooling or {})))
    return folder, model


def reference(folder, model, texts, pooling="max", activation="relu"):
    """SPLADE from its definition on transformers' masked-LM logits: float64 [N, V]."""
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for text in texts:
            logits = model(**tok(text, return_tensors="pt")).logits[0].double()
            w = torch.log1p(torch.relu(logits))
            if activation == "log1p_relu":
                w = torch.log1p(w)
            out.append(w.max(0).values if pooling == "max" else w.sum(0))
    return torch.stack(out)


def dense_rows(dicts, vocab=30522):
    out = np.zeros((len(dicts), vocab))
    for i, d in enumerate(dicts):
        for k, v in d.items():
            out[i, k] = v
    return out


@pytest.mark.parametrize("tied", [True, False])
def test_splade_matches_the_masked_lm_reference(make_checkpoint, tied):
    folder, model = splade_folder(make_checkpoint, tied=tied)
    m = embzoo.load(folder)
    assert m.model.outputs == ("sparse", "tokens") and m.dimension == 30522
    ours = m.encode(TEXTS)  # the main output: {token id: weight} dicts
    assert isinstance(ours, list) and all(isinstance(k, int) for k in ours[0])
    ref = reference(folder, model, TEXTS)
    diff = np.abs(dense_rows(ours) - ref.numpy()).max()
    assert diff < 1e-4, diff
    assert all(len(d) == int((r > 0).sum()) for d, r in zip(ours, ref, strict=True))  # no zero weights kept


def test_roberta_masked_lm_head(make_checkpoint):
    folder, model = splade_folder(make_checkpoint, roberta=True)
    ours = embzoo.load(folder).encode(TEXTS)
    assert np.abs(dense_rows(ours) - reference(folder, model, TEXTS).numpy()).max() < 1e-4


def test_saved_max_active_dims_is_the_default(make_checkpoint):
    folder, _ = splade_folder(make_checkpoint)
    (folder / "config_sentence_transformers.json").write_text(json.dumps({"max_active_dims": 4}))
    m = embzoo.load(folder)
    assert all(len(d) == 4 for d in m.encode(TEXTS)) and len(m.encode(TEXTS, max_active_dims=6)[0]) == 6
    with pytest.raises(ValueError, match="needs dense, sparse and multi-vector"):
        m.compute_score([("a", "b")])
    with pytest.raises(ValueError, match=r"gives \('sparse', 'tokens'\)"):
        m.calibrate(TEXTS)  # int8 ranges are for sentence vectors


def test_splade_sum_pooling_and_log1p_relu(make_checkpoint):
    folder, model = splade_folder(
        make_checkpoint, pooling={"pooling_strategy": "sum", "activation_function": "log1p_relu"}
    )
    ours = embzoo.load(folder).encode(TEXTS)
    ref = reference(folder, model, TEXTS, pooling="sum", activation="log1p_relu")
    assert np.abs(dense_rows(ours) - ref.numpy()).max() < 1e-4


def test_sparse_formats_and_max_active_dims(make_checkpoint):
    folder, _ = splade_folder(make_checkpoint)
    m = embzoo.load(folder)
    dicts = m.encode(TEXTS)
    coo = m.encode(TEXTS, convert_to_tensor=True)
    assert coo.is_sparse and coo.shape == (len(TEXTS), 30522)
    assert np.allclose(coo.to_dense().numpy(), dense_rows(dicts))
    csr = m.encode(TEXTS, sparse_format="scipy")
    assert csr.shape == (len(TEXTS), 30522) and np.allclose(csr.toarray(), dense_rows(dicts))
    one = m.encode("hello world")  # alone: the same weights (to rounding: other batch neighbours)
    assert set(one) == set(dicts[0]) and np.allclose(list(one.values()), [dicts[0][k] for k in one], atol=1e-6)
    top = m.encode(TEXTS, max_active_dims=5)
    for full, cut in zip(dicts, top, strict=True):
        heaviest = sorted(full.values(), reverse=True)[:5]
        assert sorted(cut.values(), reverse=True) == heaviest and set(cut) <= set(full)
    with pytest.raises(ValueError, match="max_active_dims"):
        m.encode(TEXTS, max_active_dims=0)
    with pytest.raises(ValueError, match="sparse_format"):
        m.encode(TEXTS, sparse_format="csv")


def test_splade_from_a_catalog_recipe_without_sentence_transformers_files(make_checkpoint):
    folder, model = splade_folder(make_checkpoint, st_files=False)
    plain = embzoo.load(folder)  # a bare masked-LM checkpoint is a mean-pooling embedder
    assert plain.model.outputs[0] == "sentence"
    m = embzoo.load(folder, recipe="naver/splade-v3")
    ours = m.encode(TEXTS[:2])
    assert np.abs(dense_rows(ours) - reference(folder, model, TEXTS[:2]).numpy()).max() < 1e-4


def test_cli_embed_writes_sparse_json_lines(make_checkpoint, capsys):
    from embzoo.cli import main

    folder, _ = splade_folder(make_checkpoint)
    main(["embed", "--model", str(folder), "--device", "cpu", "--max-active-dims", "3", "hello world"])
    (row,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = embzoo.load(folder, device="cpu").encode("hello world", max_active_dims=3)
    assert {int(k): v for k, v in row["sparse"].items()} == pytest.approx(want)
    with pytest.raises(SystemExit, match="one list per text"):
        main(["embed", "--model", str(folder), "--device", "cpu", "hello", "-o", "out.npy"])
    main(["demo", "--model", str(folder), "--device", "cpu", "--top-k", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert "(30522-d sparse, cpu)" in lines[0] and len(lines) == 5


def test_decode_names_the_heaviest_tokens(make_checkpoint):
    folder, _ = splade_folder(make_checkpoint)
    m = embzoo.load(folder)
    weights = m.encode(TEXTS[:2])
    tok = AutoTokenizer.from_pretrained(folder)
    heaviest = sorted(weights[0].items(), key=lambda kv: -kv[1])[:3]
    assert m.decode(weights[0], top_k=3) == [(tok.convert_ids_to_tokens(k), v) for k, v in heaviest]
    as_tensor = m.decode(m.encode(TEXTS[:2], convert_to_tensor=True), top_k=3)
    assert [[t for t, _ in row] for row in as_tensor] == [[t for t, _ in row] for row in m.decode(weights, top_k=3)]


def test_embzoo_folder_reloads_bit_exactly(make_checkpoint, tmp_path):
    from conftest import assert_round_trip

    folder, _ = splade_folder(make_checkpoint)  # tied decoder: read from the converted word embeddings
    assert_round_trip(folder, tmp_path / "converted", lambda m: m.encode(TEXTS, convert_to_tensor=True).to_dense())

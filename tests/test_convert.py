"""`embzoo convert SRC DST`: the embzoo folder (bit-exact reload, dtype, what is written, refusals, the CLI summary)
and transformers' AutoModel on it. Round trips of the other model kinds live beside their tests (assert_round_trip)."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_round_trip
from test_rerank import DOCS, QUERY, bert_checkpoint
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer

import embzoo
from embzoo.cli import main
from embzoo.conversion.convert import convert_model
from embzoo.integrations.transformers import EmbzooConfig, EmbzooModel

TEXTS = ["hello world", "a cat sat on the mat, then left", ""]


def test_minilm_folder_reloads_bit_exactly_with_its_pipeline(minilm_dir, tmp_path):
    assert_round_trip(minilm_dir, tmp_path / "minilm", lambda m: (m.encode(TEXTS), *m.encode(TEXTS, output="tokens")))
    written = {p.relative_to(tmp_path / "minilm").as_posix() for p in (tmp_path / "minilm").rglob("*") if p.is_file()}
    assert {"model.safetensors", "config.json", "modules.json", "1_Pooling/config.json", "tokenizer.json"} <= written
    section = json.loads((tmp_path / "minilm" / "config.json").read_text())["embzoo"]
    assert section["config"]["model_type"] == "bert" and section["arch"]["hidden_size"] == 384
    assert section["dtype"] == "float32" and section["format"] == 1


def test_bfloat16_folder_equals_the_source_loaded_in_bfloat16(minilm_dir, tmp_path):
    assert_round_trip(
        minilm_dir, tmp_path / "bf16", lambda m: m.encode(TEXTS, convert_to_tensor=True).float(), dtype="bfloat16"
    )
    from safetensors import safe_open

    with safe_open(str(tmp_path / "bf16" / "model.safetensors"), "pt") as f:
        assert f.get_slice("backbone.layers.0.attn.qkv.weight").get_dtype() == "BF16"


def test_refusals(minilm_dir, tmp_path):
    convert_model(minilm_dir, tmp_path / "a")
    with pytest.raises(ValueError, match="not empty"):
        convert_model(minilm_dir, tmp_path / "a")
    with pytest.raises(ValueError, match="already an embzoo folder"):
        convert_model(tmp_path / "a", tmp_path / "b")
    with pytest.raises(ValueError, match="adapters are merged before converting"):
        embzoo.load(tmp_path / "a", adapters=[str(minilm_dir)])


def test_cli_prints_the_summary(minilm_dir, tmp_path, capsys):
    main(["convert", str(minilm_dir), str(tmp_path / "out"), "--dtype", "float16"])
    out = capsys.readouterr().out
    assert "Embedder of family bert, 22,565,376 parameters, float16" in out
    assert "outputs: sentence, tokens (main: sentence, dimension 384)" in out and "copied:" in out
    with pytest.raises(SystemExit, match="embzoo convert: .* not empty"):
        main(["convert", str(minilm_dir), str(tmp_path / "out")])


def test_automodel_returns_the_embzoo_model(minilm_dir, tmp_path):
    convert_model(minilm_dir, tmp_path / "m")
    assert isinstance(AutoConfig.from_pretrained(tmp_path / "m"), EmbzooConfig)
    model = AutoModel.from_pretrained(tmp_path / "m")
    assert isinstance(model, EmbzooModel)
    tok = AutoTokenizer.from_pretrained(tmp_path / "m")
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    out = model(**enc)
    ours = model.embzoo
    assert np.array_equal(out.pooler_output.numpy(), ours.encode(TEXTS, normalize=False))
    states = ours.encode(TEXTS, output="tokens")
    for row, state, n in zip(out.last_hidden_state, states, enc["attention_mask"].sum(1).tolist(), strict=True):
        assert np.array_equal(row[:n].numpy(), state) and not row[n:].any()
    with pytest.raises(TypeError, match="cannot apply"):
        AutoModel.from_pretrained(tmp_path / "m", load_in_8bit=True)


def test_automodel_on_a_converted_cross_encoder_gives_its_logits(make_checkpoint, tmp_path):
    folder, _ = bert_checkpoint(make_checkpoint)
    convert_model(folder, tmp_path / "ce")
    model = AutoModel.from_pretrained(tmp_path / "ce", dtype=torch.float32, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ce")
    enc = tok([QUERY] * len(DOCS), DOCS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    logits = model(**enc).logits[:, 0]
    want = embzoo.load(folder, device="cpu").score([(QUERY, d) for d in DOCS], activation="none")
    assert np.allclose(logits.numpy(), want, atol=1e-6)
    with pytest.raises(ValueError, match="Unrecognized configuration class"):
        AutoModelForSequenceClassification.from_pretrained(tmp_path / "ce")  # only AutoModel is registered


def test_a_converted_folder_exports_the_same_sentence_transformers_folder(minilm_dir, tmp_path):
    from safetensors.torch import load_file

    from embzoo.conversion.export import export_sentence_transformers

    convert_model(minilm_dir, tmp_path / "conv")
    export_sentence_transformers(minilm_dir, tmp_path / "from-source")
    export_sentence_transformers(tmp_path / "conv", tmp_path / "from-converted")
    a, b = (load_file(tmp_path / n / "model.safetensors") for n in ("from-source", "from-converted"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_inspect_reads_an_embzoo_folder(minilm_dir, tmp_path):
    from embzoo.conversion.inspect import inspect_checkpoint

    convert_model(minilm_dir, tmp_path / "m")
    rows = inspect_checkpoint(tmp_path / "m").rows
    statuses = {r.status for r in rows}
    assert statuses == {"claimed", "dropped"}  # every renamed tensor fills its own parameter, nothing missing
    qkv = next(r for r in rows if r.key == "backbone.layers.0.attn.qkv.weight")
    assert qkv.param == "layers.0.attn.qkv.weight"

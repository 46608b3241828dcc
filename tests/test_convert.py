"""`embzoo convert SRC DST`: the embzoo folder (bit-exact reload, dtype, what is written, refusals, the CLI summary)
and transformers' AutoModel on it. Round trips of the other model kinds live beside their tests (assert_round_trip)."""

import json

import numpy as np
import pytest
import torch
from conftest import assert_round_trip
from test_rerank import DOCS, QUERY, bert_checkpoint
from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

import embzoo
from embzoo.cli import main
from embzoo.conversion.convert import convert_model
from embzoo.integrations.transformers import EmbzooConfig, EmbzooModel

TEXTS = ["hello world", "a cat sat on the mat, then left", ""]
BERT_CONFIG = BertConfig(
    vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)


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
    for option in ({"adapters": [str(minilm_dir)]}, {"config_overrides": {"layer_norm_eps": 1e-5}}):
        with pytest.raises(ValueError, match="its weights and ArchConfig are fixed, so .* apply when converting"):
            embzoo.load(tmp_path / "a", **option)
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    config["embzoo"]["recipe"] = "no/such-model"
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="recipe 'no/such-model', which this embzoo's catalog lacks"):
        embzoo.load(tmp_path / "a")
    config["embzoo"]["format"] = 99
    (tmp_path / "a" / "config.json").write_text(json.dumps(config))
    with pytest.raises(FileNotFoundError, match="of format 99; this embzoo reads format 1: convert the source"):
        embzoo.load(tmp_path / "a")


def files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_what_is_written_and_what_is_left_behind(make_checkpoint, tmp_path):
    folder, _ = make_checkpoint(BertModel, BERT_CONFIG, name="src", max_shard_size="100KB")  # a sharded checkpoint
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    (folder / "README.md").write_text("# the source's card")
    (folder / "pytorch_model.bin").write_bytes(b"stale legacy weights")
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"an export")
    assert_round_trip(folder, tmp_path / "dst", lambda m: m.encode(TEXTS))
    assert files(tmp_path / "dst") == sorted(
        ["config.json", "model.safetensors", "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"]
        + ["vocab.txt"]
    )


def test_sentence_transformers_subfolder_layout(make_checkpoint, tmp_path):
    folder, _ = make_checkpoint(BertModel, BERT_CONFIG, name="st/0_Transformer")
    st = folder.parent
    modules = [
        {"idx": 0, "name": "0", "path": "0_Transformer", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (st / "modules.json").write_text(json.dumps(modules))
    (st / "1_Pooling").mkdir()
    (st / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    assert_round_trip(st, tmp_path / "dst", lambda m: m.encode(TEXTS))
    assert {"config.json", "0_Transformer/config.json", "0_Transformer/model.safetensors", "modules.json"} <= set(
        files(tmp_path / "dst")
    )
    assert isinstance(AutoModel.from_pretrained(tmp_path / "dst"), EmbzooModel)  # the root says model_type embzoo


def test_cli_prints_the_summary(minilm_dir, tmp_path, capsys):
    main(["convert", str(minilm_dir), str(tmp_path / "out"), "--dtype", "float16"])
    out = capsys.readouterr().out
    assert "Embedder of family bert, 22,565,376 parameters, float16" in out
    assert "outputs: sentence, tokens (main: sentence, dimension 384)" in out and "copied:" in out
    with pytest.raises(SystemExit, match="embzoo convert: .* not empty"):
        main(["convert", str(minilm_dir), str(tmp_path / "out")])
    with pytest.raises(SystemExit, match="embzoo convert: .*is not a model folder"):
        main(["convert", str(tmp_path / "no" / "such"), str(tmp_path / "x")])


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
    with torch.no_grad():  # transformers' own BERT on the source folder: the token states
        ref = BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()(**enc).last_hidden_state
    mask = enc["attention_mask"][..., None].bool()
    assert (out.last_hidden_state - ref).masked_fill(~mask, 0).abs().max() < 1e-5
    assert not out.last_hidden_state.masked_fill(mask, 0).any()  # zeros past each length
    for option in ({"load_in_8bit": True}, {"cache_dir": str(tmp_path)}, {"device_map": {"a": 0, "b": 1}}):
        with pytest.raises(TypeError, match="cannot apply"):
            AutoModel.from_pretrained(tmp_path / "m", **option)
    tok.padding_side = "left"  # as Qwen3-Embedding's card pads: the states come back in the input's layout
    left = tok(TEXTS, padding=True, return_tensors="pt")
    assert not left["attention_mask"][:, 0].all()
    out_left = model(**left)
    assert torch.equal(out_left.pooler_output, out.pooler_output)
    starts = left["attention_mask"].argmax(dim=1)
    for b, n in enumerate(enc["attention_mask"].sum(dim=1).tolist()):
        assert torch.equal(out_left.last_hidden_state[b, starts[b] :], out.last_hidden_state[b, :n])
        assert not out_left.last_hidden_state[b, : starts[b]].any()
    with pytest.raises(ValueError, match=r"padded on the right or on the left; rows \[0\] are not"):
        model(
            input_ids=enc["input_ids"][:1],
            attention_mask=torch.tensor([[1, 0, 1] + [0] * (enc["input_ids"].shape[1] - 3)]),
        )
    model.save_pretrained(tmp_path / "saved")
    again = AutoModel.from_pretrained(tmp_path / "saved", dtype="auto", device_map={"": "cpu"})
    assert np.array_equal(again(**enc).pooler_output.numpy(), out.pooler_output.numpy())


def test_automodel_on_a_converted_cross_encoder_gives_its_logits(make_checkpoint, tmp_path):
    folder, reference = bert_checkpoint(make_checkpoint)
    convert_model(folder, tmp_path / "ce")
    model = AutoModel.from_pretrained(tmp_path / "ce", dtype=torch.float32, device_map="cpu")
    tok = AutoTokenizer.from_pretrained(tmp_path / "ce")
    enc = tok([QUERY] * len(DOCS), DOCS, padding=True, truncation=True, max_length=64, return_tensors="pt")
    logits = model(**enc).logits[:, 0]
    with torch.no_grad():  # transformers' own classifier on the source folder
        want = reference(**enc).logits[:, 0]
    assert torch.allclose(logits, want, atol=1e-5)
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

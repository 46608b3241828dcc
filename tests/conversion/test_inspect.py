"""`embzoo inspect`: the rule claiming each checkpoint tensor, unclaimed tensors, missing parameters and broken
fusions reported (not raised), the pipeline and side files, the CLI's text and JSON output."""

import dataclasses
import json
import re

import pytest
import torch
from conftest import write_st_layout
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertModel

from embzoo.cli import main
from embzoo.conversion.inspect import inspect_checkpoint

TINY = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TINY |= dict(max_position_embeddings=64)
QKV = "encoder.layer.0.attention.self.{}.weight"


def edit_weights(folder, drop=(), **add):
    """Rewrite the folder's model.safetensors without the keys `drop` and with the tensors `add`."""
    state = load_file(folder / "model.safetensors")
    state = {k: v for k, v in state.items() if k not in drop} | add
    save_file(state, folder / "model.safetensors")


@pytest.fixture
def bert(make_checkpoint):
    """A tiny BertModel folder whose file also holds the position_ids buffer (older checkpoints saved it)."""
    folder, _ = make_checkpoint(BertModel, BertConfig(**TINY))
    edit_weights(folder, **{"embeddings.position_ids": torch.arange(64)[None]})
    return folder


def by_key(found):
    return {r.key: r for r in found.rows if r.key is not None}


def test_every_tensor_of_a_bert_checkpoint_is_claimed(bert):
    found = inspect_checkpoint(bert)
    rows = by_key(found)
    assert found.family == "bert" and found.arch.hidden_size == 32 and found.arch_error is None
    assert {r.status for r in found.rows} == {"claimed", "dropped"}
    assert rows["embeddings.word_embeddings.weight"].param == "embed.tok.weight"
    for part in ("query", "key", "value"):
        row = rows[QKV.format(part)]
        assert (row.param, row.note) == ("layers.0.attn.qkv.weight", f"fused: {part} of query, key, value")
    ids = rows["embeddings.position_ids"]
    assert (ids.status, ids.shape, ids.dtype, ids.param) == ("dropped", (1, 64), "int64", None)
    assert rows["pooler.dense.weight"].status == "dropped"  # an embedder: the classification head's keys
    keys = [r.key for r in found.rows]
    assert keys.index("encoder.layer.1.output.dense.bias") < keys.index("pooler.dense.bias")


def test_unknown_tensors_missing_parameters_and_broken_fusions_are_rows_not_errors(bert):
    edit_weights(
        bert,
        drop=("encoder.layer.1.output.dense.bias", QKV.format("value")),
        **{"encoder.layer.0.attention.self.rotary.inv_freq": torch.ones(4)},
    )
    found = inspect_checkpoint(bert)
    rows = by_key(found)
    assert rows["encoder.layer.0.attention.self.rotary.inv_freq"].status == "UNCLAIMED"
    query = rows[QKV.format("query")]
    assert query.status == "MISMATCH" and "needs parts ['query', 'key', 'value']" in query.note
    missing = [(r.param, r.shape) for r in found.rows if r.status == "MISSING"]
    assert missing == [("layers.1.mlp.down.bias", (32,))]  # the unfused qkv is reported on its parts' rows


def test_wrong_shapes_are_reported_against_the_model(bert):
    edit_weights(bert, **{"embeddings.token_type_embeddings.weight": torch.zeros(3, 32)})
    row = by_key(inspect_checkpoint(bert))["embeddings.token_type_embeddings.weight"]
    assert row.status == "MISMATCH" and row.note == "embed.token_type.weight: checkpoint (3, 32) vs model (2, 32)"


def test_a_refused_config_still_shows_the_claims(bert):
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps(config | {"position_embedding_type": "relative_key"}))
    found = inspect_checkpoint(bert)
    assert found.arch is None and "relative_key" in found.arch_error
    assert {r.status for r in found.rows} == {"claimed", "dropped"}  # no model parameters to miss


def test_a_classifier_fills_its_head(make_checkpoint):
    folder, _ = make_checkpoint(BertForSequenceClassification, BertConfig(**TINY, num_labels=1))
    rows = by_key(inspect_checkpoint(folder))
    assert rows["bert.pooler.dense.weight"].param == "head.dense.weight"
    assert rows["classifier.bias"].param == "head.out.bias"


def test_pipeline_and_side_files(bert):
    write_st_layout(bert, {"pooling_mode_mean_tokens": True}, True, 48, prompts={"query": "query: "})
    (bert / "colbert_linear.pt").write_bytes(b"")
    found = inspect_checkpoint(bert)
    assert found.to_dict()["pipeline"] == {
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 48,
        "prompts": {"query": "query: "},
    }
    assert found.side_files == ("colbert_linear.pt",)


def test_cli_prints_the_table_and_the_missing_parameters(bert, capsys):
    edit_weights(bert, drop=("encoder.layer.1.output.dense.bias",), **{"extra.weight": torch.ones(2)})
    main(["inspect", str(bert)])
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("encoder.", "embeddings.", "ext"))}
    assert lines[QKV.format("key")].endswith("layers.0.attn.qkv.weight  (fused: key of query, key, value)")
    assert re.split(r"\s{2,}", lines["embeddings.position_ids"])[1:] == ["[1, 64]", "int64", "dropped"]
    assert lines["extra.weight"].endswith("UNCLAIMED")
    assert "MISSING (model parameters no tensor fills): 1\n  layers.1.mlp.down.bias  [32]" in out
    assert out.splitlines()[1] == "family: bert"
    assert out.rstrip().endswith("40 tensors: 36 claimed, 3 dropped, 1 UNCLAIMED; 1 parameters MISSING")


def test_cli_json_holds_the_rows(bert, capsys):
    main(["inspect", str(bert), "--json"])
    printed = json.loads(capsys.readouterr().out)
    rows = [dataclasses.asdict(r) | {"shape": list(r.shape)} for r in inspect_checkpoint(bert).rows]
    assert printed["rows"] == rows and printed["family"] == "bert" and printed["arch"]["num_layers"] == 2


def test_cli_names_the_supported_model_types_for_an_unknown_one(bert):
    config = json.loads((bert / "config.json").read_text())
    (bert / "config.json").write_text(json.dumps(config | {"model_type": "mamba"}))
    with pytest.raises(SystemExit, match=r"embzoo inspect: unknown architecture: model_type 'mamba'.*'bert'") as exit:
        main(["inspect", str(bert)])
    assert exit.value.code != 0


def test_dtypes_as_stored_in_safetensors_and_legacy_bin(bert):
    state = load_file(bert / "model.safetensors")
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, bert / "model.safetensors")
    assert {r.dtype for r in inspect_checkpoint(bert).rows} == {"bfloat16", "int64"}
    (bert / "model.safetensors").unlink()
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, bert / "pytorch_model.bin")
    assert {r.dtype for r in inspect_checkpoint(bert).rows} == {"float16", "int64"}

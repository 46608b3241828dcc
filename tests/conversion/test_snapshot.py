"""Reading snapshot folders and strict loading: every file layout, and clear errors for bad ones."""

import json
import shutil

import numpy as np
import pytest
import torch
from conftest import write_st_layout
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertModel

import embzoo
from embzoo.config import UnsupportedConfig
from embzoo.conversion import snapshot
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import SnapshotError, read_snapshot
from embzoo.modeling.batch import PackedBatch

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
IDS = [[101, 7592, 2088, 102], [101, 2023, 102]]


def hidden(folder):
    backbone, _ = load_backbone(read_snapshot(folder))
    with torch.no_grad():
        return backbone(PackedBatch.from_sequences(IDS))


@pytest.fixture
def plain(make_checkpoint):
    folder, _ = make_checkpoint(BertModel, TINY, name="plain")
    return folder


def test_sharded_safetensors_load_the_same_model(make_checkpoint, plain):
    folder, _ = make_checkpoint(BertModel, TINY, name="sharded", max_shard_size="300KB")
    assert (folder / "model.safetensors.index.json").is_file() and not (folder / "model.safetensors").exists()
    torch.testing.assert_close(hidden(folder), hidden(plain), atol=0, rtol=0)


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "pre-1.6-format"])
def test_legacy_bin_loads_the_same_model(plain, tmp_path, zip_format):
    """Old checkpoints ship pytorch_model.bin; it is read with weights_only=True (no unpickling)."""
    folder = tmp_path / "legacy"
    folder.mkdir()
    shutil.copy(plain / "config.json", folder)
    state = load_file(str(plain / "model.safetensors"))
    torch.save(state, folder / "pytorch_model.bin", _use_new_zipfile_serialization=zip_format)
    torch.testing.assert_close(hidden(folder), hidden(plain), atol=0, rtol=0)


def test_transformer_in_a_subfolder(make_checkpoint, plain, tmp_path):
    """Older sentence-transformers folders keep the transformer under 0_Transformer/."""
    root = tmp_path / "st"
    shutil.copytree(plain, root / "0_Transformer")
    write_st_layout(root, {"pooling_mode": "cls", "embedding_dimension": 32}, True, 32)
    modules = json.loads((root / "modules.json").read_text())
    modules[0]["path"] = "0_Transformer"
    (root / "modules.json").write_text(json.dumps(modules))
    (root / "sentence_bert_config.json").rename(root / "0_Transformer" / "sentence_bert_config.json")
    m = embzoo.load(root, device="cpu")
    assert (m.max_seq_length, m.model.pooler.modes, m.normalize) == (32, ("cls",), True)


def test_missing_config_and_weights(plain):
    (plain / "config.json").rename(plain / "other.json")
    with pytest.raises(SnapshotError, match="missing config.json"):
        read_snapshot(plain)
    (plain / "other.json").rename(plain / "config.json")
    (plain / "model.safetensors").unlink()
    with pytest.raises(SnapshotError, match="no weights .*model.safetensors"):
        load_backbone(read_snapshot(plain))


def test_unknown_architecture_lists_supported(plain):
    cfg = json.loads((plain / "config.json").read_text())
    (plain / "config.json").write_text(json.dumps(cfg | {"model_type": "t5", "architectures": ["T5Model"]}))
    with pytest.raises(UnsupportedConfig, match=r"model_type 't5'.*supported model_types: \['bert'"):
        load_backbone(read_snapshot(plain))


def test_missing_and_extra_weights_are_listed(plain):
    state = load_file(str(plain / "model.safetensors"))
    del state["encoder.layer.1.output.dense.weight"]
    state["encoder.layer.0.attention.self.rotary.inv_freq"] = torch.ones(4)
    save_file(state, str(plain / "model.safetensors"))
    with pytest.raises(WeightMismatch) as err:
        load_backbone(read_snapshot(plain))
    message = str(err.value)
    assert "missing" in message and "layers.1.mlp.down.weight" in message
    assert "left over" in message and "encoder.layer.0.attention.self.rotary.inv_freq" in message


def test_wrong_shape_is_reported(plain):
    state = load_file(str(plain / "model.safetensors"))
    state["embeddings.position_embeddings.weight"] = torch.zeros(7, 32)
    save_file(state, str(plain / "model.safetensors"))
    with pytest.raises(WeightMismatch, match=r"embed.pos.weight: checkpoint \(7, 32\) vs model \(512, 32\)"):
        load_backbone(read_snapshot(plain))


def test_unsupported_sentence_transformers_module(plain):
    (plain / "modules.json").write_text(json.dumps([{"path": "", "type": "sentence_transformers.models.LSTM"}]))
    with pytest.raises(SnapshotError, match="LSTM.*supported"):
        read_snapshot(plain)


def test_hub_id_offline_fails_with_a_clear_message(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SnapshotError, match="could not fetch 'nobody/no-such-model'.*local snapshot folder"):
        embzoo.load("nobody/no-such-model")


def test_folder_without_sentence_transformers_files_uses_the_catalog(plain, monkeypatch):
    """A hub id the catalog knows gets its prompts and pooling even when the snapshot lacks them."""
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, revision=None, **patterns: str(plain))
    m = embzoo.load("intfloat/e5-small-v2", device="cpu")
    assert m.prompts == {"query": "query: ", "passage": "passage: "}
    assert (m.model.pooler.modes, m.normalize, m.max_seq_length) == (("mean",), True, 512)
    np.testing.assert_allclose(m.encode("x", prompt_name="query"), m.encode("query: x"), atol=1e-6)


def test_folder_without_anything_defaults_to_mean_pooling(plain, caplog):
    m = embzoo.load(plain, device="cpu")
    assert m.model.pooler.modes == ("mean",) and not m.normalize
    assert "mean pooling" in caplog.text


def test_max_seq_length_override(plain):
    m = embzoo.load(plain, device="cpu", max_seq_length=16)
    assert m.max_seq_length == 16 and len(m.tokenizer.encode(["word " * 40])[0][0]) == 16
    with pytest.raises(ValueError, match="exceeds the model's position limit 512"):
        embzoo.load(plain, device="cpu", max_seq_length=600)


def fake_hub(monkeypatch, folder):
    """huggingface_hub.snapshot_download replaced by a stub that serves `folder` and records patterns."""
    calls, ignored = [], []

    def download(repo_id, revision=None, allow_patterns=None, ignore_patterns=None):
        calls.append(allow_patterns)
        ignored.append(ignore_patterns)
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", download)
    return calls, ignored


def test_hub_download_fetches_legacy_weights_only_without_safetensors(plain, tmp_path, monkeypatch):
    calls, ignored = fake_hub(monkeypatch, plain)
    assert snapshot.resolve("org/with-safetensors") == plain
    assert calls == [snapshot.HUB_FILES]
    assert ignored == [["consolidated*"]]  # Mistral repos' second copy of the weights stays on the Hub
    (bin_only := tmp_path / "bin-only").mkdir()
    calls, _ = fake_hub(monkeypatch, bin_only)
    snapshot.resolve("org/bin-only")
    assert calls == [snapshot.HUB_FILES, snapshot.HUB_LEGACY_WEIGHTS]


def test_max_seq_length_saved_by_current_sentence_transformers(plain, tmp_path):
    """sentence-transformers >= 6 keeps max_seq_length in tokenizer_config.json's model_max_length."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(plain), device="cpu")
    st.max_seq_length = 16
    st.save(str(tmp_path / "saved"))
    ours, ref = embzoo.load(tmp_path / "saved", device="cpu"), SentenceTransformer(str(tmp_path / "saved"))
    assert ours.max_seq_length == ref.max_seq_length == 16
    text = " ".join(["word"] * 40)
    np.testing.assert_allclose(ours.encode(text), ref.encode(text), atol=1e-5)


def test_modules_in_an_order_embzoo_does_not_run(plain):
    write_st_layout(plain, {"pooling_mode": "mean", "embedding_dimension": 32}, True, 32)
    modules = json.loads((plain / "modules.json").read_text())
    (plain / "modules.json").write_text(json.dumps([modules[0], modules[2], modules[1]]))
    with pytest.raises(SnapshotError, match="Transformer → Pooling → Dense… → Normalize"):
        read_snapshot(plain)


@pytest.mark.parametrize("key, value", [("use_residual", True), ("module_input_name", "token_embeddings")])
def test_dense_options_embzoo_does_not_run_are_rejected(plain, key, value):
    write_st_layout(plain, {"pooling_mode": "mean", "embedding_dimension": 32}, False, 32)
    modules = json.loads((plain / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (plain / "modules.json").write_text(json.dumps(modules))
    (plain / "2_Dense").mkdir()
    (plain / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 32, key: value}))
    with pytest.raises(SnapshotError, match=f"Dense {key}=.* is not supported"):
        read_snapshot(plain)


def test_tf_era_layer_norm_names_load(plain, tmp_path):
    """Old BERT .bin files name LayerNorm parameters gamma/beta (transformers renames them too)."""
    folder = tmp_path / "tf-era"
    folder.mkdir()
    shutil.copy(plain / "config.json", folder)
    state = load_file(str(plain / "model.safetensors"))
    renamed = {
        k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
        for k, v in state.items()
    }
    assert any(k.endswith("LayerNorm.gamma") for k in renamed)
    torch.save(renamed, folder / "pytorch_model.bin")
    torch.testing.assert_close(hidden(folder), hidden(plain), atol=0, rtol=0)


def test_roberta_without_pad_token_id_is_rejected():
    from embzoo.conversion.families import bert

    hf = {"model_type": "roberta", "vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 1}
    with pytest.raises(UnsupportedConfig, match="pad_token_id is null"):
        bert.to_arch(hf | {"num_attention_heads": 2, "intermediate_size": 16, "pad_token_id": None})


def test_hub_download_fetches_legacy_weights_for_a_dense_folder_without_safetensors(plain, monkeypatch):
    write_st_layout(plain, {"pooling_mode": "mean", "embedding_dimension": 32}, False, 32)
    modules = json.loads((plain / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (plain / "modules.json").write_text(json.dumps(modules))
    (plain / "2_Dense").mkdir()
    (plain / "2_Dense" / "config.json").write_text(json.dumps({"in_features": 32, "out_features": 8}))
    calls, _ = fake_hub(monkeypatch, plain)
    snapshot.resolve("org/dense-with-bin")
    assert calls == [snapshot.HUB_FILES, snapshot.HUB_LEGACY_WEIGHTS]

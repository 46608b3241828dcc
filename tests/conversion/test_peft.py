"""LoRA adapters merged at load time: LLM2Vec's chain (supervised adapter → mntp folder with config, tokenizer
and adapter → base weights) against peft's own merge_and_unload and unmerged forward, the merge arithmetic
on hand-written adapters, and the adapters embzoo refuses."""

import json
import math
import shutil
from types import SimpleNamespace

import pytest
import torch
from conftest import MINILM_TOKENIZER_FILES, padded, ragged_ids, reference_hidden
from peft import IA3Config, LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, MistralConfig, MistralModel

import embzoo
from embzoo.config import UnsupportedConfig
from embzoo.conversion.load import load_backbone
from embzoo.conversion.peft import adapter_chain, adapter_snapshot, lora_transform
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import SnapshotError, read_snapshot
from embzoo.modeling.batch import PackedBatch

SIZES = dict(
    vocab_size=30522,  # MiniLM's tokenizer, for embzoo.load
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    sliding_window=None,
)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MNTP = dict(r=4, lora_alpha=8, rank_pattern={"down_proj": 2}, alpha_pattern={r"layers\.1\.self_attn\.v_proj": 3})
SUPERVISED = dict(r=8, lora_alpha=4, use_rslora=True)
SEQS = ragged_ids([7, 1, 12, 4], 200)


def base_model(folder):
    return MistralModel.from_pretrained(folder, attn_implementation="eager").eval()


def save_adapter(model, folder, **lora):
    """peft's own adapter: LoRA on every Linear of the layers, B random (not zero) so it changes the model."""
    config = LoraConfig(target_modules=TARGETS, init_lora_weights=False, **lora)
    get_peft_model(model, config).save_pretrained(folder)
    return folder


def set_adapter_config(folder, **changes):
    path = folder / "adapter_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | changes))


@pytest.fixture
def llm2vec(make_checkpoint, tmp_path):
    """base: Mistral weights; mntp: config.json + tokenizer + adapter on base (no weights); supervised:
    adapter only, base_model_name_or_path = the mntp folder, trained on base + mntp merged."""
    base, _ = make_checkpoint(MistralModel, MistralConfig(**SIZES), name="base")
    torch.manual_seed(1)
    mntp = save_adapter(base_model(base), tmp_path / "mntp", **MNTP)
    for f in ("config.json", *MINILM_TOKENIZER_FILES):
        shutil.copy(base / f, mntp / f)
    torch.manual_seed(2)
    merged = PeftModel.from_pretrained(base_model(base), mntp).merge_and_unload()
    supervised = save_adapter(merged, tmp_path / "supervised", **SUPERVISED)
    set_adapter_config(supervised, base_model_name_or_path=str(mntp))
    return SimpleNamespace(base=base, mntp=mntp, supervised=supervised)


def peft_reference(llm2vec, merge_supervised=True):
    """LLM2Vec.from_pretrained's steps in peft: merge mntp into the base, then load the supervised adapter."""
    model = PeftModel.from_pretrained(base_model(llm2vec.base), llm2vec.mntp).merge_and_unload()
    model = PeftModel.from_pretrained(model, llm2vec.supervised)
    return (model.merge_and_unload() if merge_supervised else model).eval()


def packed_hidden(backbone, seqs):
    with torch.no_grad():
        out = backbone(PackedBatch.from_sequences(seqs))
    return list(out.split([len(s) for s in seqs]))


def worst(got, want):
    return max((g - w).abs().max().item() for g, w in zip(got, want, strict=True))


def test_chain_follows_base_model_name_or_path(llm2vec):
    assert adapter_chain(llm2vec.supervised) == (llm2vec.base, [llm2vec.mntp, llm2vec.supervised])
    assert adapter_chain(llm2vec.mntp) == (llm2vec.base, [llm2vec.mntp])
    snap, chain = adapter_snapshot(llm2vec.supervised)
    # config and tokenizer from the mntp folder (the top of the chain that has them), weights from the base
    assert (snap.model_dir, snap.weights_dir, chain) == (llm2vec.mntp, llm2vec.base, [llm2vec.mntp, llm2vec.supervised])


@pytest.mark.parametrize("merged", [True, False], ids=["merge_and_unload", "unmerged"])
def test_llm2vec_chain_matches_peft(llm2vec, merged):
    snap, chain = adapter_snapshot(llm2vec.supervised)
    merge = lora_transform(chain)
    backbone, _ = load_backbone(snap, transform=merge)
    merge.check()
    got = packed_hidden(backbone, SEQS)
    want = reference_hidden(peft_reference(llm2vec, merge_supervised=merged), SEQS)
    base = reference_hidden(base_model(llm2vec.base), SEQS)
    assert worst(want, base) > 0.1  # the adapters change the model a lot: the comparison is not vacuous
    assert worst(got, want) <= 1e-4  # worst seen: 2.7e-6 (merged), 1.3e-5 (unmerged)


def test_load_adapter_folder_and_extra_adapters(llm2vec):
    texts = ["what is rope?", "LoRA adapters merged at load time", "a"]
    vectors = embzoo.load(llm2vec.supervised, device="cpu").encode(texts)
    on_top = embzoo.load(llm2vec.mntp, device="cpu", adapters=[llm2vec.supervised]).encode(texts)
    tokens = AutoTokenizer.from_pretrained(llm2vec.mntp)(texts)["input_ids"]
    ids, mask = padded(tokens)
    with torch.no_grad():
        states = peft_reference(llm2vec)(input_ids=ids, attention_mask=mask).last_hidden_state
    want = (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)  # masked mean (no pooling config)
    torch.testing.assert_close(torch.from_numpy(vectors), want, atol=1e-4, rtol=0)  # worst seen: 2.8e-6
    torch.testing.assert_close(on_top, vectors, atol=0, rtol=0)


def write_adapter(folder, config, tensors, weights="adapter_model.safetensors"):
    folder.mkdir()
    defaults = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "bias": "none", "base_model_name_or_path": "base"}
    (folder / "adapter_config.json").write_text(json.dumps(defaults | config))
    if weights.endswith(".safetensors"):
        save_file(tensors, str(folder / weights))
    else:
        torch.save(tensors, folder / weights)
    return folder


def lora_pair(module, out_features, in_features, r, key="base_model.model.{}.lora_{}.weight"):
    g = torch.Generator().manual_seed(out_features * 31 + r)
    return {
        key.format(module, "A"): torch.randn(r, in_features, generator=g),
        key.format(module, "B"): torch.randn(out_features, r, generator=g),
    }


@pytest.mark.parametrize(
    "config, scaling",
    [
        ({}, 4 / 2),
        ({"use_rslora": True}, 4 / math.sqrt(2)),
        # first matching pattern wins; a pattern matches a dotted tail of the module path
        ({"rank_pattern": {"k_proj": 5, "q_proj": 2}, "alpha_pattern": {"self_attn.q_proj": 6, "q_proj": 1}}, 6 / 2),
        # a pattern starts at a dot: "_attn.q_proj" is not a tail of "layers.0.self_attn.q_proj"
        ({"r": 5, "rank_pattern": {r"layers\.0\.self_attn\.q_proj": 2}, "alpha_pattern": {"_attn.q_proj": 9}}, 4 / 2),
    ],
    ids=["alpha/r", "rslora", "patterns", "anchored-pattern"],
)
def test_merge_arithmetic(tmp_path, config, scaling):
    """W + scaling · B @ A, summed in float32 and cast back to the stored dtype, for both key prefixes."""
    tensors = lora_pair("layers.0.self_attn.q_proj", 6, 10, 2)
    merge = lora_transform([write_adapter(tmp_path / "a", config, tensors)])
    weight = torch.randn(6, 10).bfloat16()
    a, b = tensors.values()
    want = (weight.float() + scaling * (b @ a)).bfloat16()
    got = merge("model.layers.0.self_attn.q_proj.weight", weight)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=0)
    torch.testing.assert_close(merge("model.layers.0.self_attn.k_proj.weight", weight), weight, atol=0, rtol=0)
    merge.check()


def test_legacy_bin_fan_in_fan_out_and_prefixes(tmp_path):
    """adapter_model.bin with ".default" in the keys; fan_in_fan_out weights stored [in, out] get (B @ A)ᵀ;
    a module saved under the causal-LM prefix ("model.") targets a bare-model key and the other way round."""
    key = "base_model.model.{}.lora_{}.default.weight"
    tensors = lora_pair("model.h.0.mlp.c_fc", 8, 4, 2, key) | lora_pair("h.1.mlp.c_fc", 8, 4, 2, key)
    folder = write_adapter(tmp_path / "a", {"fan_in_fan_out": True}, tensors, weights="adapter_model.bin")
    merge = lora_transform([folder])
    weight = torch.randn(4, 8)
    stored = weight.clone()
    for module, base_key in [
        ("model.h.0.mlp.c_fc", "h.0.mlp.c_fc.weight"),
        ("h.1.mlp.c_fc", "model.h.1.mlp.c_fc.weight"),
    ]:
        a, b = tensors[key.format(module, "A")], tensors[key.format(module, "B")]
        torch.testing.assert_close(merge(base_key, weight), weight + 2 * (b @ a).T)
    assert torch.equal(weight, stored)  # the checkpoint's tensor is not written to
    merge.check()


def test_adapters_apply_in_order_and_every_module_must_match(tmp_path):
    first = lora_pair("layers.0.mlp.up_proj", 6, 4, 2)
    second = lora_pair("layers.0.mlp.up_proj", 6, 4, 3) | lora_pair("layers.9.mlp.up_proj", 6, 4, 3)
    merge = lora_transform(
        [write_adapter(tmp_path / "a", {}, first), write_adapter(tmp_path / "b", {"r": 3, "lora_alpha": 3}, second)]
    )
    weight = torch.randn(6, 4)
    a1, b1 = first.values()
    a2, b2 = list(second.values())[:2]
    torch.testing.assert_close(merge("layers.0.mlp.up_proj.weight", weight), weight + 2 * (b1 @ a1) + b2 @ a2)
    with pytest.raises(WeightMismatch, match=r"target no weight.*layers\.9\.mlp\.up_proj"):
        merge.check()
    with pytest.raises(WeightMismatch, match=r"\(6, 4\) update .* another base model"):
        merge("layers.0.mlp.up_proj.weight", torch.zeros(4, 6))


def test_adapter_module_with_no_base_weight_fails_the_load(llm2vec):
    """A peft adapter for another model (here: a layer the base does not have) is named, not ignored."""
    path = llm2vec.mntp / "adapter_model.safetensors"
    tensors = {k.replace("layers.1.", "layers.7."): v for k, v in load_file(str(path)).items()}
    save_file(tensors, str(path))
    merge = lora_transform([llm2vec.mntp])
    load_backbone(read_snapshot(llm2vec.base), transform=merge)
    with pytest.raises(WeightMismatch, match=r"layers\.7\.self_attn\.q_proj"):
        merge.check()


@pytest.mark.parametrize(
    "config, message",
    [
        (LoraConfig(target_modules=["q_proj"], use_dora=True), "DoRA"),
        (LoraConfig(target_modules=["q_proj"], modules_to_save=["norm"]), "modules_to_save"),
        (LoraConfig(target_modules=["q_proj"], bias="lora_only"), "bias='lora_only'.*only bias='none'"),
        (LoraConfig(target_modules=["q_proj"], lora_bias=True), "lora_bias"),
        (LoraConfig(target_modules=["q_proj", "embed_tokens"]), "LoRA on embedding layers"),
        (IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"]), "peft_type 'IA3'"),
    ],
    ids=["dora", "modules_to_save", "bias", "lora_bias", "embeddings", "ia3"],
)
def test_unsupported_adapters_are_refused(tmp_path, config, message):
    torch.manual_seed(0)
    model = MistralModel(MistralConfig(**SIZES | dict(vocab_size=50, num_hidden_layers=1)))
    get_peft_model(model, config).save_pretrained(tmp_path / "a")
    with pytest.raises(UnsupportedConfig, match=message):
        lora_transform([tmp_path / "a"])


def test_malformed_adapters_are_refused(tmp_path):
    conv = {
        "base_model.model.conv.lora_A.weight": torch.zeros(2, 3, 1, 1),
        "base_model.model.conv.lora_B.weight": torch.zeros(4, 2, 1, 1),
    }
    with pytest.raises(UnsupportedConfig, match="4-D LoRA factors"):
        lora_transform([write_adapter(tmp_path / "conv", {}, conv)])
    with pytest.raises(SnapshotError, match=r"rank 3 in adapter_config.json but lora_A \(2, 10\)"):
        lora_transform([write_adapter(tmp_path / "rank", {"r": 3}, lora_pair("q", 6, 10, 2))])
    half = {"base_model.model.q.lora_A.weight": torch.zeros(2, 3)}
    with pytest.raises(SnapshotError, match="needs both lora_A and lora_B"):
        lora_transform([write_adapter(tmp_path / "half", {}, half)])


def test_chain_errors(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_adapter(a, {"base_model_name_or_path": str(b)}, {})
    write_adapter(b, {"base_model_name_or_path": str(a)}, {})
    with pytest.raises(SnapshotError, match="loops back"):
        adapter_chain(a)
    set_adapter_config(b, base_model_name_or_path=None)
    with pytest.raises(SnapshotError, match="names no base_model_name_or_path"):
        adapter_chain(a)


def test_adapter_next_to_weights_is_merged_into_them(tmp_path):
    """A folder with both weights and an adapter is its own base (transformers' "embedded adapter")."""
    folder = write_adapter(tmp_path / "a", {"base_model_name_or_path": "elsewhere/never-fetched"}, {})
    save_file({"w": torch.zeros(1)}, str(folder / "model.safetensors"))
    assert adapter_chain(folder) == (folder, [folder])


def test_one_adapter_passed_as_a_string_is_refused(minilm_dir):
    with pytest.raises(TypeError, match=r"use adapters=\['owner/adapter'\]"):
        embzoo.load(minilm_dir, adapters="owner/adapter")

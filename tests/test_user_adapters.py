"""Named user adapters (load(adapters={name: folder})): PEFT LoRA adapters of different ranks, scalings and target
modules kept apart from the weights, selected per encode call and merged on request, against peft's PeftModel
with both adapters loaded (set_adapter) on the transformers model."""

import numpy as np
import pytest
import torch
from conftest import TINY_QWEN3, padded, save_checkpoint
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoTokenizer, Qwen3Config, Qwen3Model

import embzoo
from embzoo.conversion.peft import Adapter, LoraFactors, LoraMerge
from embzoo.conversion.rules import Target

ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ADAPTERS = {  # different ranks, scalings and targets: "b" leaves k/gate/o alone (zero blocks in fused qkv, gate/up)
    "a": dict(target_modules=ALL, r=4, lora_alpha=8, rank_pattern={"down_proj": 2}),
    "b": dict(target_modules=["q_proj", "v_proj", "up_proj", "down_proj"], r=8, lora_alpha=4, use_rslora=True),
}
TEXTS = ["what is rope?", "LoRA adapters selected per call", "a", "grouped by adapter, results in order"]


def base_model(folder):
    return Qwen3Model.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer_dir):
    """The base checkpoint and one peft adapter folder per name (B random, so each changes the model)."""
    root = tmp_path_factory.mktemp("user_adapters")
    torch.manual_seed(0)
    hf = Qwen3Model(Qwen3Config(**TINY_QWEN3, attn_implementation="eager"))
    base = save_checkpoint(hf, root / "base", tokenizer_dir)
    out = {"base": base}
    for seed, (name, lora) in enumerate(ADAPTERS.items(), 1):
        torch.manual_seed(seed)
        get_peft_model(base_model(base), LoraConfig(init_lora_weights=False, **lora)).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def model(folders):
    return embzoo.load(folders["base"], device="cpu", adapters={n: folders[n] for n in ADAPTERS})


def peft_both(folders):
    """peft's PeftModel holding both adapters, unmerged."""
    model = PeftModel.from_pretrained(base_model(folders["base"]), folders["a"], adapter_name="a")
    model.load_adapter(folders["b"], adapter_name="b")
    return model.eval()


def mean_pooled(model, folders, texts=TEXTS):
    """transformers on a right-padded batch, masked mean (the checkpoint has no pooling config)."""
    ids, mask = padded(AutoTokenizer.from_pretrained(folders["base"])(texts)["input_ids"])
    with torch.no_grad():
        states = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return (states * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def reference(folders, adapter):
    model = peft_both(folders)
    if adapter is None:
        with model.disable_adapter():
            return mean_pooled(model, folders)
    model.set_adapter(adapter)
    return mean_pooled(model, folders)


@pytest.mark.parametrize("name", list(ADAPTERS))
def test_each_adapter_matches_peft(model, folders, name):
    got = torch.from_numpy(model.encode(TEXTS, adapter=name))
    want = reference(folders, name)
    assert (want - reference(folders, None)).abs().max() > 0.05  # the adapter changes the vectors: not vacuous
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)  # worst seen: a 6.5e-7, b 1.3e-6; merged 6e-7


def test_no_adapter_is_the_base(model, folders):
    want = mean_pooled(base_model(folders["base"]), folders)
    torch.testing.assert_close(torch.from_numpy(model.encode(TEXTS)), want, atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(model.encode(TEXTS, adapter=[None] * 4)), want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("output", ["sentence", "tokens"])
def test_mixed_adapters_in_one_call_equal_separate_calls(model, output):
    names = ["b", None, "a", "b"]
    mixed = model.encode(TEXTS, adapter=names, output=output)
    for text, name, got in zip(TEXTS, names, mixed, strict=True):  # other batch neighbours: float rounding only
        torch.testing.assert_close(got, model.encode(text, adapter=name, output=output), atol=1e-5, rtol=0)


def test_merge_adapter_makes_it_the_base(folders):
    model = embzoo.load(folders["base"], device="cpu", adapters={n: folders[n] for n in ADAPTERS})
    model.merge_adapter("a")
    merged = PeftModel.from_pretrained(base_model(folders["base"]), folders["a"]).merge_and_unload().eval()
    torch.testing.assert_close(torch.from_numpy(model.encode(TEXTS)), mean_pooled(merged, folders), atol=1e-4, rtol=0)
    on_merged = PeftModel.from_pretrained(merged, folders["b"]).eval()  # "b" now runs on top of the merged "a"
    want = mean_pooled(on_merged, folders)
    torch.testing.assert_close(torch.from_numpy(model.encode(TEXTS, adapter="b")), want, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match=r"unknown adapter 'a'; loaded adapters: \['b'\]"):
        model.encode(TEXTS, adapter="a")


def test_list_form_still_merges_at_load(model, folders):
    merged = embzoo.load(folders["base"], device="cpu", adapters=[folders["b"]])
    assert merged.adapters is None
    torch.testing.assert_close(merged.encode(TEXTS), model.encode(TEXTS, adapter="b"), atol=1e-5, rtol=0)


def test_unknown_and_misplaced_adapter_names_are_refused(model, folders):
    with pytest.raises(ValueError, match=r"unknown adapter 'c'; loaded adapters: \['a', 'b'\]"):
        model.encode(TEXTS, adapter=["a", "c", "a", "a"])
    with pytest.raises(ValueError, match="3 names for 4 texts"):
        model.encode(TEXTS, adapter=["a", "b", "a"])
    with pytest.raises(ValueError, match=r"unknown adapter 'c'"):
        model.merge_adapter("c")
    plain = embzoo.load(folders["base"], device="cpu")
    with pytest.raises(ValueError, match=r"no named adapters; load it with adapters=\{name: folder\}"):
        plain.encode(TEXTS, adapter="a")
    with pytest.raises(ValueError, match="not 8/4-bit"):
        embzoo.load(folders["base"], device="cpu", adapters={"a": folders["a"]}, load_in_8bit=True)


def test_placement_is_block_exact_with_reordered_rows(tmp_path):
    """A target fused from gate and up whose rows are then reordered ([up; gate]): the up part's scaled update lands
    on its rows, the gate part the adapter does not target gets zero rows."""
    a_up, b_up = torch.randn(2, 4), torch.randn(6, 2)
    adapter = Adapter(tmp_path, {"layers.0.mlp.up_proj": LoraFactors(a_up, b_up, 3.0, fan_in_fan_out=False)})
    keys = ("layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight")
    placing = LoraMerge([adapter])
    (placed,) = placing.place([Target("layers.0.mlp.up.weight", (12, 4), keys, (6, 6), (1, 0))])
    a, b = placed["layers.0.mlp.up.weight"]
    torch.testing.assert_close(b @ a, torch.cat([3 * (b_up @ a_up), torch.zeros(6, 4)]))
    placing.check()


def test_embzoo_folders_take_named_adapters_and_convert_adapter_sources(folders, tmp_path):
    from conftest import assert_round_trip

    from embzoo.conversion.convert import convert_model

    convert_model(folders["base"], tmp_path / "base")
    named = {n: folders[n] for n in ADAPTERS}
    source = embzoo.load(folders["base"], device="cpu", adapters=named)
    converted = embzoo.load(tmp_path / "base", device="cpu", adapters=named)
    for name in ADAPTERS:
        assert np.array_equal(converted.encode(TEXTS, adapter=name), source.encode(TEXTS, adapter=name))
    assert_round_trip(folders["a"], tmp_path / "a", lambda m: m.encode(TEXTS))  # a PEFT folder: its base, merged


def test_half_precision_layers_add_the_update_in_float32_as_peft_does():
    """Under bfloat16 weights, peft (autocast_adapter_dtype, its default) keeps the LoRA factors in float32, computes
    the update there and rounds the sum once; so does NamedLoRA."""
    from torch import nn

    from embzoo.modeling.named_lora import NamedLoRA

    torch.manual_seed(0)
    root = nn.Sequential(nn.Linear(48, 40)).to(torch.bfloat16)
    config = LoraConfig(target_modules=["0"], r=4, lora_alpha=16, init_lora_weights=False)
    peft_model = get_peft_model(root, config).eval()
    layer = peft_model.base_model.model[0]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    assert a.dtype == torch.float32
    x = torch.randn(64, 48, dtype=torch.bfloat16)
    with torch.no_grad():
        want = peft_model(x)
        plain = nn.Sequential(nn.Linear(48, 40)).to(torch.bfloat16)
        plain[0].load_state_dict(layer.base_layer.state_dict())
        lora = NamedLoRA(plain)
        lora.add("x", {"0": (a.detach(), b.detach() * layer.scaling["default"])})
        with lora.active("x"):
            got = plain(x)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, want, atol=0, rtol=2**-7)  # at most one bfloat16 rounding apart

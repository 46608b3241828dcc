"""NomicBert: config translation (original remote-code and transformers layouts), and parity against
transformers' NomicBertModel / NomicBertForSequenceClassification.

transformers' NomicBert has no biases, rotates the whole head and only has the gated MLP. The original
layout can ask for all three, so for those cases the reference is transformers' model with the missing
piece added in this file, from the remote code's definition: random biases on its Linear layers
(out_proj's bias follows qkv_proj_bias), rotate-half on the first rotary_dim dims only, and a
fc1 → exact GELU → fc2 MLP. Everything else (embeddings, attention, norms, dynamic NTK) is transformers'.
transformers' dynamic NTK is the spec formula on the padded batch length with a cached, growing base:
sequences above max_trained_positions are compared one at a time on a fresh copy of the reference.
"""

import copy
import dataclasses
import json
import re

import pytest
import torch
from conftest import ragged_ids, reference_hidden
from safetensors.torch import save_file
from torch import nn
from transformers import NomicBertConfig, NomicBertForSequenceClassification, NomicBertModel
from transformers.models.nomic_bert import modeling_nomic_bert

from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import nomic_bert
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch

# nomic-ai/nomic-embed-text-v1.5's config.json (original keys; the hub copy also carries some of
# transformers' keys, which the remote code ignores)
V15 = {
    "model_type": "nomic_bert",
    "architectures": ["NomicBertModel"],
    "activation_function": "swiglu",
    "causal": False,
    "dense_seq_output": True,
    "fused_bias_fc": True,
    "fused_dropout_add_ln": True,
    "layer_norm_epsilon": 1e-12,
    "max_trained_positions": 2048,
    "mlp_fc1_bias": False,
    "mlp_fc2_bias": False,
    "n_embd": 768,
    "n_head": 12,
    "n_inner": 3072,
    "n_layer": 12,
    "n_positions": 8192,
    "pad_vocab_size_multiple": 64,
    "parallel_block": False,
    "parallel_block_tied_norm": False,
    "prenorm": False,
    "qkv_proj_bias": False,
    "rotary_emb_base": 1000,
    "rotary_emb_fraction": 1.0,
    "rotary_emb_interleaved": False,
    "rotary_emb_scale_base": None,
    "rotary_scaling_factor": None,
    "type_vocab_size": 2,
    "use_flash_attn": True,
    "use_rms_norm": False,
    "use_xentropy": True,
    "vocab_size": 30528,
}


def test_to_arch_nomic_embed_v15():
    a = nomic_bert.to_arch(V15)
    assert (a.hidden_size, a.num_layers, a.num_heads, a.head_dim, a.intermediate_size) == (768, 12, 12, 64, 3072)
    assert (a.vocab_size, a.type_vocab_size, a.max_positions, a.norm_eps) == (30528, 2, 8192, 1e-12)
    assert (a.positions, a.rope_theta, a.rotary_fraction, a.rope_scaling) == ("rope", 1000.0, 1.0, "none")
    assert (a.mlp_gated, a.activation, a.qkv_bias, a.out_bias, a.mlp_bias) == (True, "silu", False, False, False)
    assert (a.norm_placement, a.embed_norm, a.final_norm) == ("post", True, False)
    # transformers' keys next to the original ones (as on the hub) change nothing
    mixed = V15 | {"hidden_size": 32, "max_position_embeddings": 2048, "rope_parameters": {"rope_theta": 5.0}}
    assert nomic_bert.to_arch(mixed) == a


def test_to_arch_dynamic_ntk_and_remote_code_defaults():
    a = nomic_bert.to_arch(V15 | {"rotary_scaling_factor": 2, "max_trained_positions": 512})
    assert (a.rope_scaling, a.rope_factor, a.rope_original_max, a.max_positions) == ("ntk_dynamic", 2.0, 512, 8192)
    # keys left out take the remote code's defaults (GPT2Config + its NomicBertConfig), not v1.5's values
    hf = {"model_type": "nomic_bert", "n_embd": 48, "n_head": 4, "n_layer": 1, "vocab_size": 100}
    a = nomic_bert.to_arch(hf | {"rotary_emb_fraction": 0.5, "activation_function": "swiglu"})
    assert (a.rope_theta, a.norm_eps, a.max_positions, a.type_vocab_size) == (10000.0, 1e-5, 1024, 2)
    assert (a.qkv_bias, a.out_bias, a.mlp_bias, a.rotary_dim) == (True, True, True, 6)
    assert a.intermediate_size == 256  # int(8 * 48 / 3) = 128, rounded up to a multiple of 256
    a = nomic_bert.to_arch(hf | {"rotary_emb_fraction": 1.0, "n_inner": 300, "activation_function": "geglu"})
    assert (a.intermediate_size, a.activation, a.mlp_gated) == (512, "gelu", True)
    a = nomic_bert.to_arch(hf | {"rotary_emb_fraction": 1.0, "n_positions": 0, "pad_vocab_size_multiple": 64})
    assert (a.intermediate_size, a.activation, a.mlp_gated) == (192, "gelu", False)  # gelu_new: exact GELU
    assert (a.max_positions, a.vocab_size) == (2048, 128)
    # lenient booleans
    assert not nomic_bert.to_arch(V15 | {"qkv_proj_bias": "false", "prenorm": "False"}).qkv_bias


def test_to_arch_transformers_layout():
    hf = {"model_type": "nomic_bert", "vocab_size": 100, "hidden_size": 48, "num_hidden_layers": 2}
    hf |= {"num_attention_heads": 4, "intermediate_size": 80, "max_position_embeddings": 512}
    a = nomic_bert.to_arch(hf)
    assert (a.rope_theta, a.rope_scaling, a.max_positions, a.norm_eps) == (1000.0, "none", 512, 1e-12)
    assert a.activation == "silu"
    assert (a.qkv_bias, a.out_bias, a.mlp_bias, a.mlp_gated, a.head_dim) == (False, False, False, True, 12)
    dyn = hf | {"rope_parameters": {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 500.0}, "head_dim": 16}
    a = nomic_bert.to_arch(dyn | {"hidden_act": "gelu_pytorch_tanh"})
    assert (a.rope_scaling, a.rope_factor, a.rope_original_max, a.max_positions) == ("ntk_dynamic", 4.0, 512, 2048)
    assert (a.rope_theta, a.head_dim, a.activation) == (500.0, 16, "gelu_tanh")
    assert nomic_bert.to_arch(hf | {"rope_theta": 20.0}).rope_theta == 20.0  # legacy top-level theta


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"prenorm": True}, "prenorm"),
        ({"rotary_emb_interleaved": "true"}, "rotary_emb_interleaved"),
        ({"rotary_emb_scale_base": 512}, "xPos"),
        ({"rotary_emb_fraction": 0.0}, "absolute"),
        ({"rotary_emb_fraction": 0.3}, "not whole"),
        ({"moe_every_n_layers": 2, "num_experts": 8}, "mixture-of-experts"),
        ({"activation_function": "glu"}, "activation_function"),
        ({"mlp_fc1_bias": True}, "both or neither"),
        ({"use_rms_norm": True}, "use_rms_norm"),
        ({"num_heads_kv": 4}, "num_heads_kv"),
    ],
)
def test_to_arch_rejects_unsupported_original_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        nomic_bert.to_arch(V15 | changes)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0}}, "rope_type"),
        ({"rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.5}}, "partial_rotary_factor"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"num_experts": 4}, "mixture-of-experts"),
    ],
)
def test_to_arch_rejects_unsupported_transformers_variants(changes, message):
    hf = {"model_type": "nomic_bert", "vocab_size": 100, "hidden_size": 48, "num_hidden_layers": 2}
    hf |= {"num_attention_heads": 4, "intermediate_size": 80}
    with pytest.raises(UnsupportedConfig, match=message):
        nomic_bert.to_arch(hf | changes)


# ---------------------------------------------------------------- reference models and checkpoints


class SpecMLP(nn.Module):
    """The remote code's non-gated MLP: fc2(GELU(fc1 x)), exact GELU whatever the config's gelu name."""

    def __init__(self, hidden: int, inner: int, bias: bool):
        super().__init__()
        self.fc1 = nn.Linear(hidden, inner, bias=bias)
        self.fc2 = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x):
        return self.fc2(nn.functional.gelu(self.fc1(x)))


def partial_rotary(q, k, cos, sin, unsqueeze_dim=1):
    """transformers' apply_rotary_pos_emb on the first cos.shape[-1] dims of each head, the rest untouched."""
    r = cos.shape[-1]
    cos, sin = cos.unsqueeze(unsqueeze_dim), sin.unsqueeze(unsqueeze_dim)

    def rotate(x):
        head, rest = x[..., :r], x[..., r:]
        return torch.cat([head * cos + modeling_nomic_bert.rotate_half(head) * sin, rest], dim=-1)

    return rotate(q), rotate(k)


def spread_weights(model: nn.Module, seed: int) -> None:
    """Re-draw every parameter at unit scale (transformers' init, std 0.02, hides position effects)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 2:
                p.copy_(noise / p.shape[1] ** 0.5)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            else:
                p.copy_(0.2 * noise)


def reference_model(orig: dict, inner: int, monkeypatch, seed: int = 0) -> NomicBertModel:
    """transformers' NomicBertModel for an original-layout config (translated by hand: transformers'
    NomicBertConfig ignores n_embd & co.), extended with what it lacks (see the module docstring)."""
    gated = orig["activation_function"] in ("swiglu", "geglu")
    scaled = orig.get("rotary_scaling_factor")
    fraction = orig["rotary_emb_fraction"]
    rope = {"rope_type": "dynamic", "factor": float(scaled)} if scaled else {"rope_type": "default"}
    rope |= {"rope_theta": float(orig["rotary_emb_base"]), "partial_rotary_factor": fraction}
    multiple = orig.get("pad_vocab_size_multiple", 1)
    config = NomicBertConfig(
        vocab_size=-(-orig["vocab_size"] // multiple) * multiple,
        hidden_size=orig["n_embd"],
        num_hidden_layers=orig["n_layer"],
        num_attention_heads=orig["n_head"],
        intermediate_size=inner,
        hidden_act="gelu" if orig["activation_function"] == "geglu" else "silu",
        layer_norm_eps=orig["layer_norm_epsilon"],
        type_vocab_size=orig["type_vocab_size"],
        max_position_embeddings=orig["max_trained_positions"] if scaled else orig["n_positions"],
        rope_parameters=rope,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = NomicBertModel(config).eval()
    for layer in model.layers:
        attn = layer.self_attn
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj):
            if orig["qkv_proj_bias"]:
                lin.bias = nn.Parameter(torch.zeros(lin.out_features))
        if not gated:
            layer.mlp = SpecMLP(config.hidden_size, inner, orig["mlp_fc1_bias"])
        elif orig["mlp_fc1_bias"]:
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                lin.bias = nn.Parameter(torch.zeros(lin.out_features))
    if fraction < 1:
        r = int(config.head_dim * fraction)
        inv_freq = 1.0 / config.rope_parameters["rope_theta"] ** (torch.arange(0, r, 2).float() / r)
        model.rotary_emb.inv_freq = inv_freq  # transformers' default rope ignores partial_rotary_factor
        model.rotary_emb.original_inv_freq = inv_freq.clone()
        monkeypatch.setattr(modeling_nomic_bert, "apply_rotary_pos_emb", partial_rotary)
    spread_weights(model, seed)
    return model


# transformers name (per layer) → original name; q/k/v are concatenated into attn.Wqkv
ORIGINAL_NAMES = {
    "self_attn.o_proj": "attn.out_proj",
    "mlp.up_proj": "mlp.fc11",
    "mlp.gate_proj": "mlp.fc12",
    "mlp.down_proj": "mlp.fc2",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
    "post_attention_layernorm": "norm1",
    "post_mlp_layernorm": "norm2",
}


def original_state_dict(model: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    """The reference's weights under the remote code's names (transformers' conversion mapping, reversed)."""
    sd, out = model.state_dict(), {}
    for name, t in sd.items():
        if name.startswith("embeddings."):
            out[prefix + name.replace("embeddings.LayerNorm.", "emb_ln.")] = t
            continue
        i, module, p = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name).groups()
        if module in ("self_attn.k_proj", "self_attn.v_proj"):
            continue
        if module == "self_attn.q_proj":
            parts = [sd[f"layers.{i}.self_attn.{x}_proj.{p}"] for x in "qkv"]
            out[f"{prefix}encoder.layers.{i}.attn.Wqkv.{p}"] = torch.cat(parts)
        else:
            out[f"{prefix}encoder.layers.{i}.{ORIGINAL_NAMES[module]}.{p}"] = t
    return {k: v.contiguous() for k, v in out.items()}


def write_original(folder, model, orig: dict, prefix: str = ""):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(orig))
    save_file(original_state_dict(model, prefix), str(folder / "model.safetensors"))
    return folder


def ours_hidden(backbone, seqs):
    with torch.no_grad():
        return backbone(PackedBatch.from_sequences(seqs)).split([len(s) for s in seqs])


def assert_parity(got, expected):
    """Token states and masked-mean pooled states within 1e-4; returns the max token diff."""
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
        worst = max(worst, (g - e).abs().max().item())
    pooled = torch.stack([g.mean(0) for g in got]), torch.stack([e.mean(0) for e in expected])
    torch.testing.assert_close(*pooled, atol=1e-4, rtol=0)
    return worst


def small_original(**changes) -> dict:
    """A tiny original-layout config in nomic-embed-text-v1.5's style."""
    base = dict(V15, n_embd=48, n_head=4, n_layer=2, n_inner=256, n_positions=64, vocab_size=300)
    base |= dict(pad_vocab_size_multiple=1, max_trained_positions=16)
    return base | changes


# (original config, expected intermediate width: the test's own reading of the remote code's rounding)
ORIGINAL_CASES = [
    pytest.param(small_original(), 256, id="swiglu-v1.5-like"),
    pytest.param(
        small_original(rotary_emb_fraction=0.5, qkv_proj_bias=True, mlp_fc1_bias=True, mlp_fc2_bias=True),
        256,
        id="partial-rotary-biases",
    ),
    pytest.param(
        small_original(n_inner=None, qkv_proj_bias=True, type_vocab_size=1, layer_norm_epsilon=1e-5),
        256,
        id="qkv-bias-default-inner",
    ),
    pytest.param(
        small_original(activation_function="geglu", n_layer=3, n_inner=300, pad_vocab_size_multiple=64),
        512,
        id="geglu-rounded-inner-padded-vocab",
    ),
    pytest.param(
        small_original(activation_function="gelu_new", n_inner=96, qkv_proj_bias=True, mlp_fc1_bias=True)
        | dict(mlp_fc2_bias=True, rotary_emb_base=10000),
        96,
        id="non-gated-gelu",
    ),
]


@pytest.mark.parametrize("orig, inner", ORIGINAL_CASES)
def test_original_layout_matches_reference(tmp_path, monkeypatch, orig, inner):
    ref = reference_model(orig, inner, monkeypatch)
    ours, head = load_backbone(read_snapshot(write_original(tmp_path / "ckpt", ref, orig)))
    assert head is None and ours.cfg.intermediate_size == inner
    seqs = ragged_ids([1, 40, 7, 2, 33, 1, 17, 40, 5], 300)
    assert_parity(ours_hidden(ours, seqs), reference_hidden(ref, seqs))


def test_original_layout_with_bert_prefix_and_mlm_head(tmp_path, monkeypatch):
    orig = small_original(architectures=["NomicBertForPreTraining"])
    ref = reference_model(orig, 256, monkeypatch)
    folder = write_original(tmp_path / "ckpt", ref, orig, prefix="bert.")
    mlm_head = {"cls.predictions.transform.dense.weight": torch.zeros(48, 48), "cls.predictions.bias": torch.zeros(300)}
    save_file(mlm_head | original_state_dict(ref, "bert."), str(folder / "model.safetensors"))
    ours, _ = load_backbone(read_snapshot(folder))
    seqs = ragged_ids([3, 12, 30], 300)
    assert_parity(ours_hidden(ours, seqs), reference_hidden(ref, seqs))


NTK_CASES = [
    pytest.param(small_original(rotary_scaling_factor=2), 256, id="ntk-f2"),
    pytest.param(
        small_original(rotary_scaling_factor=3.0, rotary_emb_fraction=0.5, qkv_proj_bias=True, n_layer=3),
        256,
        id="ntk-f3-partial-bias",
    ),
]


@pytest.mark.parametrize("orig, inner", NTK_CASES)
def test_dynamic_ntk_matches_reference_one_sequence_at_a_time(tmp_path, monkeypatch, orig, inner):
    ref = reference_model(orig, inner, monkeypatch)
    ours, _ = load_backbone(read_snapshot(write_original(tmp_path / "ckpt", ref, orig)))
    assert (ours.cfg.rope_scaling, ours.cfg.rope_original_max) == ("ntk_dynamic", 16)
    # at or below max_trained_positions nothing is scaled: a padded batch is fine
    short = ragged_ids([16, 1, 9, 16, 4], 300, seed=1)
    assert_parity(ours_hidden(ours, short), reference_hidden(copy.deepcopy(ref), short))
    # above it the reference scales by the padded length and keeps the grown base: one fresh copy each
    long = ragged_ids([24, 40, 17, 31], 300, seed=2)
    got = ours_hidden(ours, long)
    expected = [reference_hidden(copy.deepcopy(ref), [s])[0] for s in long]
    assert_parity(got, expected)
    # the scaling is exercised: without it the long sequences come out clearly different
    plain = Backbone(dataclasses.replace(ours.cfg, rope_scaling="none"))
    plain.load_state_dict(ours.state_dict())
    unscaled = ours_hidden(plain.eval(), long)
    assert max((u - e).abs().max().item() for u, e in zip(unscaled, expected, strict=True)) > 1e-2


def test_dynamic_ntk_is_per_sequence_batch_invariant(tmp_path, monkeypatch):
    orig = small_original(rotary_scaling_factor=2, rotary_emb_fraction=0.5)
    ref = reference_model(orig, 256, monkeypatch)
    ours, _ = load_backbone(read_snapshot(write_original(tmp_path / "ckpt", ref, orig)))
    long, short_a, short_b, longer = ragged_ids([30, 3, 16, 40], 300, seed=3)
    alone = ours_hidden(ours, [long])[0]
    for batch in ([short_a, long, short_b], [long, longer], [short_b, longer, long, short_a]):
        got = ours_hidden(ours, batch)[batch.index(long)]
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
    # the short ones are not scaled by their long neighbours either
    next_to_long = ours_hidden(ours, [short_b, longer])[0]
    torch.testing.assert_close(next_to_long, ours_hidden(ours, [short_b])[0], atol=1e-5, rtol=0)


# ---------------------------------------------------------------- transformers (native) layout

SMALL = dict(vocab_size=300, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80)
NATIVE_CASES = [
    pytest.param(NomicBertConfig(**SMALL, max_position_embeddings=64), id="default"),
    pytest.param(
        NomicBertConfig(
            **SMALL | dict(num_hidden_layers=3, type_vocab_size=1, layer_norm_eps=1e-5),
            hidden_act="gelu_pytorch_tanh",
            head_dim=16,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        ),
        id="gelu-tanh-head16",
    ),
]


def native_checkpoint(make_checkpoint, model_cls, config, native_names: bool):
    """save_pretrained's folder (a native config over the ORIGINAL weight names: transformers reverses its
    conversion mapping on save), or the same folder re-written with the in-memory (native) names."""
    folder, model = make_checkpoint(model_cls, config)
    spread_weights(model, seed=0)
    model.save_pretrained(folder)
    if native_names:
        (folder / "model.safetensors").unlink()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "model.safetensors"))
    return folder, model


@pytest.mark.parametrize("native_names", [False, True], ids=["saved-names", "native-names"])
@pytest.mark.parametrize("config", NATIVE_CASES)
def test_transformers_layout_matches_transformers(make_checkpoint, config, native_names):
    folder, ref = native_checkpoint(make_checkpoint, NomicBertModel, config, native_names)
    assert ("n_embd" in json.loads((folder / "config.json").read_text())) is False
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    seqs = ragged_ids([1, 40, 7, 2, 33, 1, 17, 40, 5], config.vocab_size)
    assert_parity(ours_hidden(ours, seqs), reference_hidden(ref, seqs))


def test_transformers_layout_dynamic_ntk(make_checkpoint):
    dynamic = {"rope_type": "dynamic", "factor": 2.0}
    config = NomicBertConfig(**SMALL, max_position_embeddings=16, rope_parameters=dynamic)
    folder, ref = native_checkpoint(make_checkpoint, NomicBertModel, config, native_names=False)
    pristine = copy.deepcopy(ref)
    ours, _ = load_backbone(read_snapshot(folder))
    assert (ours.cfg.rope_scaling, ours.cfg.rope_original_max, ours.max_seq_len) == ("ntk_dynamic", 16, 32)
    seqs = ragged_ids([20, 32, 5, 16], config.vocab_size, seed=4)
    expected = [reference_hidden(copy.deepcopy(pristine), [s])[0] for s in seqs]
    assert_parity(ours_hidden(ours, seqs), expected)


def test_classification_head_matches_transformers(make_checkpoint):
    config = NomicBertConfig(**SMALL, num_labels=3, max_position_embeddings=64)
    folder, ref = native_checkpoint(make_checkpoint, NomicBertForSequenceClassification, config, native_names=False)
    backbone, head = load_backbone(read_snapshot(folder))
    assert head is not None
    seqs = ragged_ids([3, 12, 1, 30], config.vocab_size, seed=1)
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = head(head.pool(backbone(batch), batch.cu_seqlens))
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    # loaded as an embedder, the pooler and classifier are dropped
    backbone, head = load_backbone(read_snapshot(folder), with_head=False)
    assert head is None

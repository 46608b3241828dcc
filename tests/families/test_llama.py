"""Llama-layout decoders (Llama, Mistral, Qwen2, Qwen3): config translation, and fp32 parity against
transformers' LlamaModel / MistralModel / Qwen2Model / Qwen3Model and their *ForCausalLM checkpoints."""

import json

import pytest
import torch
from conftest import assert_parity, ragged_ids, variant_output
from safetensors import safe_open
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    LlamaModel,
    MistralConfig,
    MistralModel,
    Qwen2Config,
    Qwen2Model,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
)

import embzoo.kernels as K
from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import llama
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.pooling import Pooler

# Qwen/Qwen3-Embedding-0.6B's config.json, trimmed to what to_arch reads
QWEN3_EMBEDDING = {
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "vocab_size": 151669,
    "hidden_size": 1024,
    "intermediate_size": 3072,
    "num_hidden_layers": 28,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_act": "silu",
    "max_position_embeddings": 32768,
    "rms_norm_eps": 1e-06,
    "rope_scaling": None,
    "rope_theta": 1000000,
    "attention_bias": False,
    "use_sliding_window": False,
    "sliding_window": None,
    "max_window_layers": 28,
    "tie_word_embeddings": True,
}
# a small Qwen2 config in the form gte-Qwen2 / Qwen2 checkpoints write (sliding_window set, switched off)
QWEN2 = {
    "model_type": "qwen2",
    "vocab_size": 1000,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "hidden_act": "silu",
    "rope_theta": 1000000.0,
    "use_sliding_window": False,
    "sliding_window": 131072,
    "max_window_layers": 2,
}
MISTRAL = QWEN2 | {"model_type": "mistral", "rope_theta": 10000.0, "sliding_window": 4096}
for key in ("use_sliding_window", "max_window_layers"):
    del MISTRAL[key]


def test_to_arch_qwen3_embedding():
    a = llama.to_arch(QWEN3_EMBEDDING)
    sizes = (a.vocab_size, a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim, a.intermediate_size)
    assert sizes == (151669, 1024, 28, 16, 8, 128, 3072)
    assert (a.positions, a.rope_theta, a.rope_scaling, a.rotary_fraction) == ("rope", 1e6, "none", 1.0)
    assert (a.norm, a.norm_eps, a.norm_weight_offset, a.norm_placement) == ("rms", 1e-6, 0.0, "pre")
    assert (a.embed_norm, a.final_norm, a.type_vocab_size, a.embed_scale) == (False, True, 0, 1.0)
    assert (a.causal, a.layer_types, a.local_window, a.qk_norm) == (True, (), 0, "head")
    assert (a.qkv_bias, a.out_bias, a.mlp_bias, a.mlp_gated, a.activation) == (False, False, False, True, "silu")
    assert (a.attn_scale, a.attn_softcap, a.max_positions) == (0.0, 0.0, 32768)


def test_to_arch_qwen2_sliding_layers_need_use_sliding_window():
    a = llama.to_arch(QWEN2)  # use_sliding_window false: sliding_window is ignored
    assert (a.layer_types, a.local_window, a.qkv_bias, a.out_bias, a.qk_norm) == ((), 0, True, False, "none")
    a = llama.to_arch(QWEN2 | {"use_sliding_window": True, "sliding_window": 8})
    assert (a.layer_types, a.local_window) == (("full", "full", "local", "local"), 7)
    # no max_window_layers: transformers' default 28
    hf = {k: v for k, v in QWEN2.items() if k != "max_window_layers"} | {"num_hidden_layers": 30}
    assert llama.to_arch(hf | {"use_sliding_window": True}).layer_types == ("full",) * 28 + ("local",) * 2


def test_to_arch_mistral_window_on_every_layer():
    a = llama.to_arch(MISTRAL)
    assert (a.layer_types, a.local_window) == (("local",) * 4, 4095)
    assert (a.qkv_bias, a.out_bias, a.mlp_bias) == (False, False, False)
    assert llama.to_arch(MISTRAL | {"sliding_window": None}).layer_types == ()
    # MistralModel ignores layer_types and bias flags; so does embzoo
    ignored = {"layer_types": ["full_attention"] * 4, "attention_bias": True, "mlp_bias": True}
    assert llama.to_arch(MISTRAL | ignored) == llama.to_arch(MISTRAL)


def test_to_arch_explicit_layer_types_win_over_max_window_layers():
    names = ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]
    hf = QWEN2 | {"model_type": "qwen3", "use_sliding_window": True, "sliding_window": 16, "layer_types": names}
    a = llama.to_arch(hf)
    assert (a.layer_types, a.local_window, a.qk_norm) == (("local", "full", "local", "full"), 15, "head")
    # all-full lists normalize to () (no window needed)
    assert llama.to_arch(hf | {"layer_types": ["full_attention"] * 4}).layer_types == ()


def test_to_arch_llama_biases_and_no_windows():
    hf = MISTRAL | {"model_type": "llama", "attention_bias": True, "mlp_bias": True}
    a = llama.to_arch(hf | {"layer_types": ["sliding_attention"] * 4})  # LlamaModel has no sliding windows
    assert (a.qkv_bias, a.out_bias, a.mlp_bias, a.layer_types) == (True, True, True, ())
    a = llama.to_arch(QWEN3_EMBEDDING | {"attention_bias": True, "mlp_bias": True})
    assert (a.qkv_bias, a.out_bias, a.mlp_bias) == (True, True, False)


@pytest.mark.parametrize("is_causal", [False, "false"])
def test_to_arch_not_causal_is_bidirectional_without_windows(is_causal):
    a = llama.to_arch(MISTRAL | {"is_causal": is_causal})
    assert (a.causal, a.layer_types, a.local_window) == (False, (), 0)
    a = llama.to_arch(QWEN2 | {"is_causal": is_causal, "use_sliding_window": True, "sliding_window": 8})
    assert (a.causal, a.layer_types) == (False, ())


def test_to_arch_rope_parameters_form():
    hf = {k: v for k, v in QWEN3_EMBEDDING.items() if k not in ("rope_theta", "rope_scaling")}
    assert llama.to_arch(hf | {"rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}).rope_theta == 5e5
    assert llama.to_arch(hf).rope_theta == 10000.0  # transformers' default


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_type 'linear'; only unscaled"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e6}}, "rope_type 'yarn'"),
        ({"rope_parameters": {"rope_type": "llama3", "factor": 8.0}}, "rope_type 'llama3'"),
        ({"layer_types": ["full_attention"] * 27}, "must name 28 layers"),
        ({"layer_types": ["full_attention"] * 27 + ["chunked_attention"]}, "each one of"),
        ({"layer_types": ["full_attention"] * 27 + ["sliding_attention"]}, "need use_sliding_window true"),
        ({"use_sliding_window": True, "layer_types": ["sliding_attention"] * 28}, "positive sliding_window"),
        ({"hidden_act": "gelu_fast"}, "hidden_act 'gelu_fast'; supported"),
        ({"is_causal": "sometimes"}, "not a boolean"),
        ({"num_attention_heads": 12}, "not a multiple of num_kv_heads"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        llama.to_arch(QWEN3_EMBEDDING | changes)


# initializer_range 0.2 (not 0.02): attention far from uniform, so a wrong mask, window or rotary shows
SMALL = dict(
    vocab_size=200,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    initializer_range=0.2,
    rms_norm_eps=1e-6,
    pad_token_id=0,
)
LENGTHS = [1, 30, 7, 2, 23, 1, 17]
NOISE = 0.2  # on norms and biases (see conftest.make_checkpoint)


# (reference class, config, ArchConfig changes each of which must change the output: the features the case tests)
MODELS = [
    pytest.param(
        Qwen3Model,
        Qwen3Config(**SMALL, head_dim=16, rope_theta=1e4),
        [{"causal": False}, {"rope_theta": 500.0}],
        id="qwen3-gqa",
    ),
    pytest.param(
        Qwen2Model,
        Qwen2Config(**SMALL, rope_theta=500.0, use_sliding_window=True, sliding_window=5, max_window_layers=1),
        [{"layer_types": ()}, {"local_window": 5}],
        id="qwen2-causal-sliding-layers",
    ),
    pytest.param(Qwen2Model, Qwen2Config(**SMALL, is_causal=False), [{"causal": True}], id="qwen2-bidirectional"),
    pytest.param(
        MistralModel,
        MistralConfig(**SMALL, sliding_window=6),
        [{"layer_types": ()}, {"local_window": 6}],
        id="mistral-window",
    ),
    pytest.param(
        LlamaModel, LlamaConfig(**SMALL, attention_bias=True, mlp_bias=True), [{"causal": False}], id="llama-biases"
    ),
]


@pytest.mark.parametrize("model_cls, config, variants", MODELS)
def test_backbone_matches_transformers(make_checkpoint, model_cls, config, variants):
    folder, ref = make_checkpoint(model_cls, config, noise=NOISE)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    seqs = ragged_ids(LENGTHS, config.vocab_size)
    got = assert_parity(ours, ref, seqs)
    for changes in variants:
        assert (variant_output(ours, seqs, **changes) - got).abs().max() > 1e-3, changes


@pytest.mark.parametrize("model_cls, config", [MODELS[0].values[:2], MODELS[-1].values[:2]], ids=["qwen3", "llama"])
def test_backbone_through_triton_kernels_matches_transformers(make_checkpoint, model_cls, config):
    """The fused per-head q/k norm + rotary kernel (Qwen3) and rotary alone (Llama), run by the Triton
    interpreter, keep fp32 parity."""
    folder, ref = make_checkpoint(model_cls, config, noise=NOISE)
    ours, _ = load_backbone(read_snapshot(folder))
    with K.use("triton"):
        assert_parity(ours, ref, ragged_ids(LENGTHS, config.vocab_size))


def test_bidirectional_flag_reaches_config_json(make_checkpoint):
    """The qwen2-bidirectional case is bidirectional on both sides: transformers reads config.is_causal."""
    folder, _ = make_checkpoint(Qwen2Model, Qwen2Config(**SMALL, is_causal=False))
    assert json.loads((folder / "config.json").read_text())["is_causal"] is False
    assert read_snapshot(folder).config["is_causal"] is False


@pytest.mark.parametrize("tied", [True, False])
def test_causal_lm_checkpoint_loads_as_embedder(make_checkpoint, tied):
    """*ForCausalLM checkpoints: keys under "model.", an lm_head (saved only when untied) that is dropped."""
    model_cls = Qwen3ForCausalLM if tied else LlamaForCausalLM
    config_cls = Qwen3Config if tied else LlamaConfig
    config = config_cls(**SMALL, tie_word_embeddings=tied)
    folder, ref = make_checkpoint(model_cls, config, noise=NOISE)
    with safe_open(folder / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "model.embed_tokens.weight" in keys and ("lm_head.weight" in keys) is not tied
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    assert_parity(ours, ref.model, ragged_ids([5, 19, 1, 12], config.vocab_size, seed=3))


def test_last_token_pooling_matches_left_padded_reference(make_checkpoint):
    """Qwen3-Embedding's reference: left padding, last_hidden_state[:, -1]. embzoo pools each packed
    sequence's last token (rotary is relative, so the pad-shifted positions transformers uses don't matter)."""
    config = Qwen3Config(**SMALL, head_dim=16)
    folder, ref = make_checkpoint(Qwen3Model, config, noise=NOISE)
    ours, _ = load_backbone(read_snapshot(folder))
    seqs = ragged_ids(LENGTHS, config.vocab_size, seed=4)
    width = max(map(len, seqs))
    ids = torch.tensor([[0] * (width - len(s)) + s for s in seqs])
    mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs])
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).last_hidden_state[:, -1]
        got = Pooler(("lasttoken",))(ours(batch), batch.cu_seqlens)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)

"""Gemma 2 and Gemma 3 text: config translation (EmbeddingGemma-300m, Gemma2-9B, legacy and transformers 5
forms), and fp32 parity against transformers' Gemma2Model / Gemma3TextModel / Gemma3ForCausalLM."""

import json

import pytest
from conftest import assert_parity, ragged_ids, variant_output
from transformers import Gemma2Config, Gemma2Model, Gemma3ForCausalLM, Gemma3TextConfig, Gemma3TextModel

import embzoo.kernels as K
from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import gemma2
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot

GLOBAL = (5, 11, 17, 23)
# google/embeddinggemma-300m's config.json (written by transformers 4.57), trimmed to what to_arch reads
EMBEDDING_GEMMA = {
    "model_type": "gemma3_text",
    "architectures": ["Gemma3TextModel"],
    "vocab_size": 262144,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 24,
    "num_attention_heads": 3,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 2048,
    "rms_norm_eps": 1e-06,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": None,
    "final_logit_softcapping": None,
    "attention_bias": False,
    "sliding_window": 512,
    "_sliding_window_pattern": 6,
    "layer_types": ["full_attention" if i in GLOBAL else "sliding_attention" for i in range(24)],
    "rope_theta": 1000000.0,
    "rope_local_base_freq": 10000.0,
    "rope_scaling": None,
    "use_bidirectional_attention": True,
}
# google/gemma-2-9b-it's config.json, trimmed (no layer_types: transformers alternates sliding, full)
GEMMA2_9B = {
    "model_type": "gemma2",
    "architectures": ["Gemma2ForCausalLM"],
    "vocab_size": 256000,
    "hidden_size": 3584,
    "intermediate_size": 14336,
    "num_hidden_layers": 42,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 256,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_activation": "gelu_pytorch_tanh",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-06,
    "query_pre_attn_scalar": 256,
    "attn_logit_softcapping": 50.0,
    "final_logit_softcapping": 30.0,
    "attention_bias": False,
    "sliding_window": 4096,
    "sliding_window_size": 4096,
    "rope_theta": 10000.0,
}


def test_to_arch_embedding_gemma():
    a = gemma2.to_arch(EMBEDDING_GEMMA)
    sizes = (a.vocab_size, a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim, a.intermediate_size)
    assert sizes == (262144, 768, 24, 3, 1, 256, 1152)
    assert a.layer_types == tuple("full" if i in GLOBAL else "local" for i in range(24))
    assert (a.causal, a.local_window) == (False, 256)  # transformers: |i - j| < 512 // 2 + 1
    assert (a.rope_theta, a.rope_theta_local, a.attn_scale, a.attn_softcap) == (1e6, 1e4, 1 / 16, 0.0)
    assert (a.embed_scale, a.norm_weight_offset, a.norm_eps, a.norm_placement) == (768**0.5, 1.0, 1e-6, "sandwich")
    assert (a.qk_norm, a.activation, a.mlp_gated, a.mlp_bias, a.qkv_bias) == ("head", "gelu_tanh", True, False, False)
    assert (a.final_norm, a.embed_norm, a.max_positions) == (True, False, 2048)
    # Gemma 3 attention applies no softcap, whatever the config says (transformers passes none)
    assert gemma2.to_arch(EMBEDDING_GEMMA | {"attn_logit_softcapping": 50.0}).attn_softcap == 0.0


def test_embedding_gemma_forms_agree_with_transformers_config():
    """The transformers 5 spelling (rope_parameters by layer type) and the default layer pattern give the
    same ArchConfig; transformers' own config reads the same layer types and thetas."""
    ref = Gemma3TextConfig(**{k: v for k, v in EMBEDDING_GEMMA.items() if k not in ("model_type", "architectures")})
    assert ref.layer_types == EMBEDDING_GEMMA["layer_types"]
    new_form = {k: v for k, v in EMBEDDING_GEMMA.items() if not k.startswith(("rope_", "layer_types"))}
    new_form["rope_parameters"] = ref.rope_parameters
    assert {k: p["rope_theta"] for k, p in ref.rope_parameters.items()} == {
        "full_attention": 1e6,
        "sliding_attention": 1e4,
    }
    assert gemma2.to_arch(new_form) == gemma2.to_arch(EMBEDDING_GEMMA)
    assert json.loads(ref.to_json_string())["sliding_window"] == 512  # what a saved config.json says


def test_to_arch_gemma2_9b():
    a = gemma2.to_arch(GEMMA2_9B)
    sizes = (a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim, a.intermediate_size)
    assert sizes == (3584, 42, 16, 8, 256, 14336)
    assert a.layer_types == tuple("local" if i % 2 == 0 else "full" for i in range(42))
    assert (a.causal, a.local_window, a.attn_softcap, a.attn_scale) == (True, 4095, 50.0, 1 / 16)
    assert (a.rope_theta, a.rope_theta_local, a.qk_norm, a.norm_placement) == (1e4, 0.0, "none", "sandwich")
    assert (a.embed_scale, a.norm_weight_offset, a.activation) == (3584**0.5, 1.0, "gelu_tanh")
    # transformers' Gemma2 defaults: softcap 50 when the key is absent, off when null
    assert gemma2.to_arch({k: v for k, v in GEMMA2_9B.items() if k != "attn_logit_softcapping"}).attn_softcap == 50
    assert gemma2.to_arch(GEMMA2_9B | {"attn_logit_softcapping": None}).attn_softcap == 0.0


def test_to_arch_gemma3_causal_default_pattern_and_legacy_thetas():
    hf = {k: v for k, v in EMBEDDING_GEMMA.items() if k not in ("layer_types", "use_bidirectional_attention")}
    a = gemma2.to_arch(hf | {"num_hidden_layers": 8, "sliding_window_pattern": 4, "rope_local_base_freq": 20.0})
    assert a.layer_types == ("local", "local", "local", "full") * 2
    assert (a.causal, a.local_window, a.rope_theta, a.rope_theta_local) == (True, 511, 1e6, 20.0)
    a = gemma2.to_arch({k: v for k, v in hf.items() if not k.startswith("rope_")})  # transformers' defaults
    assert (a.layer_types[:6], a.rope_theta, a.rope_theta_local) == (("local",) * 5 + ("full",), 1e6, 1e4)


@pytest.mark.parametrize("hf", [EMBEDDING_GEMMA, GEMMA2_9B], ids=["gemma3", "gemma2"])
def test_to_arch_not_causal_is_bidirectional_without_windows(hf):
    a = gemma2.to_arch(hf | {"is_causal": False, "use_bidirectional_attention": False})
    assert (a.causal, a.layer_types, a.local_window) == (False, (), 0)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_scaling": {"factor": 8.0, "rope_type": "linear"}}, "rope_type 'linear'; only unscaled"),
        ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0}}}, "full_attention: rope_type"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1e6}}, "keyed by layer type"),
        ({"layer_types": ["sliding_attention"] * 23}, "must name 24 layers"),
        ({"layer_types": ["chunked_attention"] * 24}, "each one of"),
        ({"layer_types": None, "sliding_window_pattern": 0}, "sliding_window_pattern 0"),
        ({"sliding_window": None}, "sliding_window >= 2"),
        ({"hidden_activation": "gelu_fast"}, "hidden_activation 'gelu_fast'; supported"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        gemma2.to_arch(EMBEDDING_GEMMA | changes)


def test_gemma2_rejects_scaled_rope():
    with pytest.raises(UnsupportedConfig, match="gemma2: rope_type 'dynamic'"):
        gemma2.to_arch(GEMMA2_9B | {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}})


SMALL = dict(
    vocab_size=200,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
    query_pre_attn_scalar=20,  # scale 20^-0.5, not head_dim^-0.5
    initializer_range=0.2,
    pad_token_id=0,
)
LENGTHS = [1, 30, 7, 2, 23, 1, 17]
NOISE = 0.2  # Gemma norms start at w = 0 (scale 1 + w = 1): noise makes a wrong offset or a swapped norm show
THETAS = {
    "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
    "sliding_attention": {"rope_type": "default", "rope_theta": 30.0},
}

# (reference class, config, ArchConfig changes each of which must change the output)
MODELS = [
    pytest.param(
        Gemma2Model,
        Gemma2Config(**SMALL, rope_theta=500.0, sliding_window=6, attn_logit_softcapping=2.0),
        [{"attn_softcap": 0.0}, {"layer_types": ()}, {"attn_scale": 0.0}],
        id="gemma2-causal-softcap-window6",
    ),
    pytest.param(
        Gemma3TextModel,
        Gemma3TextConfig(
            **SMALL,
            sliding_window=7,  # |i - j| <= 3
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters=THETAS,
            use_bidirectional_attention=True,
        ),
        [{"layer_types": ()}, {"local_window": 4}, {"causal": True}, {"rope_theta_local": 0.0}],
        id="gemma3-bidirectional-window7",
    ),
    pytest.param(
        Gemma3TextModel,
        Gemma3TextConfig(**SMALL, sliding_window=5, sliding_window_pattern=2, attn_logit_softcapping=3.0),
        [{"local_window": 5}, {"rope_theta_local": 0.0}, {"embed_scale": 1.0}],
        id="gemma3-causal-window5-softcap-ignored",
    ),
]


@pytest.mark.parametrize("model_cls, config, variants", MODELS)
def test_backbone_matches_transformers(make_checkpoint, model_cls, config, variants):
    folder, ref = make_checkpoint(model_cls, config, noise=NOISE)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None and "local" in ours.cfg.layer_types
    seqs = ragged_ids(LENGTHS, config.vocab_size)
    got = assert_parity(ours, ref, seqs)
    for changes in variants:
        assert (variant_output(ours, seqs, **changes) - got).abs().max() > 1e-3, changes


def test_gemma3_through_triton_kernels_matches_transformers(make_checkpoint):
    """Gemma 3's (1 + w) per-head q/k norms and rotary fused in the Triton kernel (interpreter) keep fp32 parity."""
    model_cls, config, _ = MODELS[1].values
    folder, ref = make_checkpoint(model_cls, config, noise=NOISE)
    ours, _ = load_backbone(read_snapshot(folder))
    with K.use("triton"):
        assert_parity(ours, ref, ragged_ids(LENGTHS, config.vocab_size))


def test_gemma3_causal_lm_checkpoint_loads_as_embedder(make_checkpoint):
    """Gemma3ForCausalLM: keys under "model.", the tied lm_head not saved."""
    config = Gemma3TextConfig(**SMALL, sliding_window=4, sliding_window_pattern=2, rope_parameters=THETAS)
    folder, ref = make_checkpoint(Gemma3ForCausalLM, config, noise=NOISE)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None and ours.cfg.layer_types == ("local", "full", "local")
    assert_parity(ours, ref.model, ragged_ids([5, 19, 1, 12], config.vocab_size, seed=3))

"""Gemma 1 (gemma.py's own model_type): config translation, fp32 parity against transformers' GemmaModel /
GemmaForCausalLM, and the bf16-rounded embedding scale shared by every Gemma (vs transformers' scaled
embedding). Gemma 2/3 are tested in test_gemma2.py."""

import json

import pytest
import torch
from conftest import assert_parity, ragged_ids, variant_output
from transformers import GemmaConfig, GemmaForCausalLM, GemmaModel
from transformers.models.gemma.modeling_gemma import GemmaTextScaledWordEmbedding

from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import gemma
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.embeddings import Embeddings

# google/gemma-2b's config.json (bge-reranker-v2-gemma's base), trimmed to what to_arch reads
GEMMA_2B = {
    "model_type": "gemma",
    "architectures": ["GemmaForCausalLM"],
    "vocab_size": 256000,
    "hidden_size": 2048,
    "intermediate_size": 16384,
    "num_hidden_layers": 18,
    "num_attention_heads": 8,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "hidden_act": "gelu",
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-06,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "attention_bias": False,
}


def test_to_arch_gemma_2b():
    a = gemma.to_arch(GEMMA_2B)
    sizes = (a.vocab_size, a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim, a.intermediate_size)
    assert sizes == (256000, 2048, 18, 8, 1, 256, 16384)
    assert (a.embed_scale, a.embed_norm, a.final_norm) == (2048**0.5, False, True)
    assert (a.norm, a.norm_eps, a.norm_weight_offset, a.norm_placement) == ("rms", 1e-6, 1.0, "pre")
    assert (a.activation, a.mlp_gated, a.mlp_bias, a.qkv_bias, a.out_bias) == ("gelu_tanh", True, False, False, False)
    assert (a.positions, a.rope_theta, a.rope_theta_local, a.qk_norm) == ("rope", 1e4, 0.0, "none")
    assert (a.causal, a.layer_types, a.attn_scale, a.attn_softcap, a.max_positions) == (True, (), 0.0, 0.0, 8192)
    # Gemma 1 has no sliding layers, softcap or query_pre_attn_scalar, whatever the config says
    extras = {"sliding_window": 4, "attn_logit_softcapping": 5.0, "query_pre_attn_scalar": 7}
    assert gemma.to_arch(GEMMA_2B | extras) == a


@pytest.mark.parametrize(
    "changes, activation",
    [
        ({"hidden_act": "gelu_pytorch_tanh"}, "gelu_tanh"),
        ({"hidden_act": "gelu", "hidden_activation": "gelu_pytorch_tanh"}, "gelu_tanh"),
        ({"hidden_act": "gelu", "hidden_activation": None}, "gelu_tanh"),  # legacy "gelu" = tanh approximation
        ({"hidden_act": "gelu_pytorch_tanh", "hidden_activation": "silu"}, "silu"),  # old configs: it wins
    ],
)
def test_to_arch_gemma1_activation(changes, activation):
    assert gemma.to_arch(GEMMA_2B | changes).activation == activation


@pytest.mark.parametrize("flags", [{"use_bidirectional_attention": True}, {"is_causal": False}])
def test_to_arch_gemma1_bidirectional(flags):
    assert gemma.to_arch(GEMMA_2B | flags).causal is False


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_type 'linear'; only unscaled"),
        ({"rope_parameters": {"rope_type": "dynamic", "factor": 2.0}}, "rope_type 'dynamic'"),
        ({"hidden_act": "gelu_fast"}, "hidden_act 'gelu_fast'; supported"),
        ({"use_bidirectional_attention": "both"}, "not a boolean"),
        ({"num_key_value_heads": 3}, "not a multiple of num_kv_heads"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        gemma.to_arch(GEMMA_2B | changes)


SMALL = dict(
    vocab_size=200,
    hidden_size=48,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,  # not hidden / heads
    initializer_range=0.2,
    rope_theta=500.0,
    pad_token_id=0,
)
LENGTHS = [1, 30, 7, 2, 23, 1, 17]
NOISE = 0.2  # Gemma norms start at w = 0, i.e. a scale of 1 + w = 1: noise makes the offset show


def test_gemma_model_matches_transformers(make_checkpoint):
    config = GemmaConfig(**SMALL, attention_bias=True)
    folder, ref = make_checkpoint(GemmaModel, config, noise=NOISE)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None and ours.cfg.qkv_bias and ours.cfg.out_bias
    seqs = ragged_ids(LENGTHS, config.vocab_size)
    got = assert_parity(ours, ref, seqs)
    for changes in ({"embed_scale": 1.0}, {"norm_weight_offset": 0.5}, {"activation": "gelu"}):
        assert (variant_output(ours, seqs, **changes) - got).abs().max() > 1e-3, changes


def test_causal_lm_checkpoint_with_legacy_gelu_loads_as_embedder(make_checkpoint):
    """GemmaForCausalLM ("model." prefix, tied lm_head) whose config.json says hidden_act "gelu", as the
    original Gemma releases do: transformers runs the tanh approximation, and so does embzoo."""
    config = GemmaConfig(**SMALL)
    folder, ref = make_checkpoint(GemmaForCausalLM, config, noise=NOISE)
    hf = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(hf | {"hidden_act": "gelu"}))
    ours, _ = load_backbone(read_snapshot(folder))
    assert ours.cfg.activation == "gelu_tanh"
    assert_parity(ours, ref.model, ragged_ids([5, 19, 1, 12], config.vocab_size, seed=3))


@pytest.mark.parametrize("hidden", [768, 3072])  # sqrt: 27.71 → 27.75, 55.43 → 55.5 in bf16
def test_bf16_embedding_scale_is_rounded_like_transformers(hidden):
    """embzoo's scaled token embedding equals transformers' Gemma one exactly in bf16 (the scale is rounded
    to bf16 before multiplying; an fp32 scale would give different values)."""
    vocab = 50
    arch = gemma.to_arch(GEMMA_2B | {"hidden_size": hidden, "vocab_size": vocab, "num_attention_heads": 1})
    ours = Embeddings(arch).to(torch.bfloat16)
    ref = GemmaTextScaledWordEmbedding(vocab, hidden, 0, embed_scale=hidden**0.5).to(torch.bfloat16)
    torch.manual_seed(0)
    with torch.no_grad():
        ref.weight.normal_()
        ours.tok.weight.copy_(ref.weight)
    ids = ragged_ids([7, 1, 12], vocab)
    with torch.no_grad():
        got = ours(PackedBatch.from_sequences(ids))
        want = ref(torch.tensor(sum(ids, [])))
        unrounded = (ref.weight[torch.tensor(sum(ids, []))].float() * hidden**0.5).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want)
    assert not torch.equal(got, unrounded)

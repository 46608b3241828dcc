"""ModernBERT: config translation (legacy and layer_types/rope_parameters forms), and parity against
transformers' ModernBertModel / ModernBertForSequenceClassification / ModernBertForMaskedLM."""

import functools
import json

import pytest
import torch
from conftest import padded, ragged_ids
from transformers import ModernBertConfig, ModernBertForMaskedLM, ModernBertForSequenceClassification, ModernBertModel

from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import modernbert
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.heads import ClassificationHead

# answerdotai/ModernBERT-base's config.json (legacy form), trimmed to what to_arch reads
BASE_LEGACY = {
    "model_type": "modernbert",
    "architectures": ["ModernBertForMaskedLM"],
    "vocab_size": 50368,
    "hidden_size": 768,
    "intermediate_size": 1152,
    "num_hidden_layers": 22,
    "num_attention_heads": 12,
    "hidden_activation": "gelu",
    "max_position_embeddings": 8192,
    "norm_eps": 1e-05,
    "norm_bias": False,
    "attention_bias": False,
    "mlp_bias": False,
    "global_attn_every_n_layers": 3,
    "local_attention": 128,
    "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0,
    "classifier_pooling": "mean",
    "classifier_activation": "gelu",
    "classifier_bias": False,
}


def test_to_arch_legacy_form():
    a = modernbert.to_arch(BASE_LEGACY)
    assert a.layer_types == tuple("full" if i % 3 == 0 else "local" for i in range(22))
    assert (a.local_window, a.rope_theta, a.rope_theta_local) == (64, 160000.0, 10000.0)
    assert (a.norm_placement, a.first_attn_norm, a.final_norm, a.embed_norm) == ("pre", False, True, True)
    assert (a.norm_bias, a.qkv_bias, a.out_bias, a.mlp_bias, a.mlp_gated) == (False, False, False, False, True)
    assert (a.positions, a.activation, a.norm_eps, a.type_vocab_size, a.head_dim) == ("rope", "gelu", 1e-5, 0, 64)
    # a null local theta means the global one (rope_theta_local 0)
    assert modernbert.to_arch(BASE_LEGACY | {"local_rope_theta": None}).rope_theta_local == 0.0


def test_to_arch_layer_types_and_rope_parameters_form():
    hf = {k: v for k, v in BASE_LEGACY.items() if not k.endswith("rope_theta")}
    hf |= {"num_hidden_layers": 3, "local_attention": 7, "hidden_activation": "gelu_pytorch_tanh"}
    hf["layer_types"] = ["sliding_attention", "full_attention", "sliding_attention"]
    hf["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": 1000.0},
        "sliding_attention": {"rope_type": "default", "rope_theta": 20.0},
    }
    a = modernbert.to_arch(hf)  # layer_types wins over global_attn_every_n_layers
    assert (a.layer_types, a.local_window, a.activation) == (("local", "full", "local"), 3, "gelu_tanh")
    assert (a.rope_theta, a.rope_theta_local) == (1000.0, 20.0)
    # no theta anywhere: transformers' defaults
    a = modernbert.to_arch(hf | {"rope_parameters": None})
    assert (a.rope_theta, a.rope_theta_local) == (160000.0, 10000.0)


def test_head_config():
    assert modernbert.head_config(BASE_LEGACY) == dict(
        activation="gelu", dense_bias=False, norm=True, norm_eps=1e-5, norm_bias=False, pooling="mean"
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"hidden_activation": "mish"}, "hidden_activation"),
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "unscaled"),
        ({"rope_parameters": {"full_attention": {"rope_type": "yarn", "factor": 4.0}}}, "only 'default'"),
        ({"rope_parameters": {"rope_type": "default", "rope_theta": 1.0}}, "keyed by layer type"),
        ({"layer_types": ["full_attention"] * 21 + ["chunked_attention"]}, "layer_types"),
        ({"layer_types": ["full_attention"] * 3}, "layer_types"),
        ({"global_attn_every_n_layers": 0}, "global_attn_every_n_layers"),
        ({"num_attention_heads": 7}, "not divisible"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        modernbert.to_arch(BASE_LEGACY | changes)


@pytest.mark.parametrize(
    "changes, message",
    [({"classifier_pooling": "max"}, "classifier_pooling"), ({"classifier_activation": "mish"}, "activation")],
)
def test_head_config_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        modernbert.head_config(BASE_LEGACY | changes)


@pytest.fixture
def make_checkpoint(make_checkpoint):
    """conftest's builder with noise 0.2 on every 1-D parameter (transformers initializes norms to 1 and
    biases to 0, which would hide a bias or norm mapped to the wrong place)."""
    return functools.partial(make_checkpoint, noise=0.2)


def to_legacy_form(folder, every, global_rope_theta, local_rope_theta):
    """Rewrite a saved config.json the way pre-5.0 checkpoints on the Hub spell it."""
    path = folder / "config.json"
    hf = json.loads(path.read_text())
    del hf["layer_types"], hf["rope_parameters"]
    hf |= {"global_attn_every_n_layers": every}
    hf |= {"global_rope_theta": global_rope_theta, "local_rope_theta": local_rope_theta}
    path.write_text(json.dumps(hf))


# local_attention 8 (|i - j| <= 4) or 7 (<= 3): sequences up to 40 tokens exceed the window
# initializer_range 0.2 (not 0.02): large enough activations that a wrong window, theta or GELU shows
SMALL = dict(
    initializer_range=0.2,
    vocab_size=300,
    hidden_size=48,
    intermediate_size=40,
    num_hidden_layers=3,
    num_attention_heads=4,
    local_attention=8,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    cls_token_id=1,
    sep_token_id=2,
)
THETAS = dict(global_rope_theta=1000.0, local_rope_theta=50.0)
LEGACY = "legacy"  # marker: save with global_attn_every_n_layers / global+local_rope_theta only
CONFIGS = [
    pytest.param(dict(global_attn_every_n_layers=2, **THETAS), LEGACY, id="legacy-every2"),
    pytest.param(
        dict(global_attn_every_n_layers=3, hidden_activation="gelu_pytorch_tanh", local_attention=7, **THETAS),
        LEGACY,
        id="legacy-every3-tanh-odd-window",
    ),
    pytest.param(
        dict(
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "default", "rope_theta": 2000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 30.0},
            },
        ),
        None,
        id="layer-types-local-first",
    ),
    pytest.param(
        dict(global_attn_every_n_layers=2, norm_bias=True, attention_bias=True, mlp_bias=True, norm_eps=1e-6),
        None,
        id="biases",
    ),
]
LENGTHS = [1, 40, 7, 2, 33, 9, 17, 5]


@pytest.mark.parametrize("changes, form", CONFIGS)
def test_backbone_matches_transformers(make_checkpoint, changes, form):
    config = ModernBertConfig(**SMALL | changes)
    folder, ref = make_checkpoint(ModernBertModel, config)
    if form == LEGACY:
        to_legacy_form(folder, changes["global_attn_every_n_layers"], **THETAS)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    assert ours.cfg.layer_types == tuple({"full_attention": "full"}.get(t, "local") for t in config.layer_types)
    seqs = ragged_ids(LENGTHS, config.vocab_size)
    ids, mask = padded(seqs, config.pad_token_id)
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        out = ref(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(batch).split(LENGTHS)
    for i, g in enumerate(got):
        torch.testing.assert_close(g, out[i, : LENGTHS[i]], atol=1e-4, rtol=0)
    # batch invariance: each sequence alone gives the same states
    with torch.no_grad():
        alone = ours(PackedBatch.from_sequences([seqs[1]]))
    torch.testing.assert_close(alone, got[1], atol=1e-5, rtol=0)


HEAD_CONFIGS = [
    pytest.param(dict(classifier_pooling="cls", num_labels=1), id="cls-1label"),
    pytest.param(dict(classifier_pooling="mean", num_labels=3), id="mean-3labels"),
    pytest.param(
        dict(
            classifier_pooling="mean", num_labels=1, classifier_bias=True, norm_bias=True, classifier_activation="silu"
        ),
        id="mean-biases-silu",
    ),
]


@pytest.mark.parametrize("changes", HEAD_CONFIGS)
def test_classification_head_matches_transformers(make_checkpoint, changes):
    config = ModernBertConfig(**SMALL | THETAS | dict(global_attn_every_n_layers=2) | changes)
    folder, ref = make_checkpoint(ModernBertForSequenceClassification, config)
    backbone, head = load_backbone(read_snapshot(folder))
    assert head is not None and head.pooling == changes["classifier_pooling"]
    lengths = [3, 12, 1, 30, 21]
    seqs = ragged_ids(lengths, config.vocab_size, seed=1)
    ids, mask = padded(seqs, config.pad_token_id)
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = head(head.pool(backbone(batch), batch.cu_seqlens))
    assert got.shape == (len(seqs), config.num_labels)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_masked_lm_checkpoint_loads_as_embedder(make_checkpoint):
    """answerdotai/ModernBERT-* are ModernBertForMaskedLM: head.* and decoder.* are dropped."""
    config = ModernBertConfig(**SMALL | THETAS | dict(global_attn_every_n_layers=2))
    folder, ref = make_checkpoint(ModernBertForMaskedLM, config)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    seqs = ragged_ids([11, 25], config.vocab_size, seed=2)
    ids, mask = padded(seqs, config.pad_token_id)
    with torch.no_grad():
        want = ref.model(input_ids=ids, attention_mask=mask).last_hidden_state
        got = ours(PackedBatch.from_sequences(seqs)).split([11, 25])
    for i, g in enumerate(got):
        torch.testing.assert_close(g, want[i, : len(seqs[i])], atol=1e-4, rtol=0)


def test_classifier_loaded_as_embedder_drops_the_head(make_checkpoint):
    config = ModernBertConfig(**SMALL | dict(classifier_pooling="mean"))
    folder, _ = make_checkpoint(ModernBertForSequenceClassification, config)
    backbone, head = load_backbone(read_snapshot(folder), with_head=False)
    assert head is None and len(backbone.layers) == SMALL["num_hidden_layers"]


@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_head_pool_on_packed_states(pooling):
    head = ClassificationHead(4, 2, pooling=pooling)
    hidden = torch.arange(24, dtype=torch.float32).view(6, 4)
    cu = torch.tensor([0, 1, 4, 6], dtype=torch.int32)
    parts = hidden.split([1, 3, 2])
    want = torch.stack([p[0] if pooling == "cls" else p.mean(0) for p in parts])
    torch.testing.assert_close(head.pool(hidden, cu), want)

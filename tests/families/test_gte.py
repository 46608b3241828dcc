"""GTE NewModel / GteModel: config translation, and parity against transformers' GteModel (authors' and
transformers' weight layouts) and against the authors' forward written out below (absolute positions)."""

import json
import math
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import padded, ragged_ids
from safetensors.torch import save_file

try:
    from transformers import GteConfig, GteForSequenceClassification, GteForTokenClassification, GteModel
except ImportError:  # older transformers (the device machine's 5.17) have no Gte classes
    pytest.skip("this transformers version has no Gte* classes (the parity reference)", allow_module_level=True)

from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import gte
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch

SIZES = dict(vocab_size=300, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=80)
THETA, NTK = 500.0, 2.0
LENGTHS = [1, 40, 7, 2, 23, 1, 40]
# transformers' default init (std 0.02) leaves attention almost uniform, so wrong positions would hide
# under the tolerance; std 0.2 makes rotary matter (see test_ntk_scaling_changes_the_output)
INIT = 0.2


def authors_config(model_type="new", **changes):
    """A config.json as the authors' NewConfig (or Snowflake's copy, model_type "gte") writes it."""
    return {
        "model_type": model_type,
        "architectures": ["NewModel"],
        **SIZES,
        "hidden_act": "gelu",
        "max_position_embeddings": 128,
        "type_vocab_size": 2,
        "layer_norm_type": "layer_norm",
        "layer_norm_eps": 1e-12,
        "position_embedding_type": "rope",
        "rope_theta": THETA,
        "rope_scaling": {"type": "ntk", "factor": NTK},
        "pack_qkv": True,
        "unpad_inputs": "true",
        "use_memory_efficient_attention": "true",
        "logn_attention_scale": "false",
        "logn_attention_clip1": False,
        "pad_token_id": 1,
    } | changes


def reference_config(hf):
    """transformers' GteConfig computing what the authors' config asks for: static NTK (base θ·f,
    frequencies / f^(2/d)) is rope_type linear with factor f^(2/d) at base θ·f."""
    d = hf["hidden_size"] // hf["num_attention_heads"]
    scaling = hf.get("rope_scaling")
    f = scaling["factor"] if scaling else 1.0
    rope = {"rope_type": "linear", "factor": f ** (2 / d), "rope_theta": hf["rope_theta"] * f}
    if not scaling:
        rope = {"rope_type": "default", "rope_theta": hf["rope_theta"]}
    keys = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    keys += ("hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id")
    return GteConfig(**{k: hf[k] for k in keys}, rope_parameters=rope, initializer_range=INIT)


AUTHORS_NAMES = [  # transformers' name within a layer → the authors' (pack_qkv true / false)
    (r"self_attn\.o_proj\.", "attention.o_proj."),
    (r"post_attention_layernorm\.", "attn_ln."),
    (r"post_mlp_layernorm\.", "mlp_ln."),
    (r"mlp\.down_proj\.", "mlp.down_proj."),
    (r"self_attn\.(?=[qkv]_proj\.)", "attention."),
]


def authors_state(native, prefix="", pack_qkv=True):
    """transformers GteModel tensors renamed to the authors' layout: q|k|v → qkv_proj (rows Q, K, V),
    [up; gate] → up_gate_proj, post_*_layernorm → attn_ln / mlp_ln, encoder.layer.{i}, optional "new."."""
    out = {}
    for name, t in native.items():
        base = name.removeprefix("gte.")
        m = re.fullmatch(r"layers\.(\d+)\.(.+)", base)
        if m is None:  # embeddings, pooler (under the prefix) and classifier (never prefixed)
            out[("" if base.startswith("classifier.") else prefix) + base] = t
            continue
        layer, rest = f"{prefix}encoder.layer.{m[1]}.", m[2]
        if rest == "mlp.up_proj.weight":
            out[layer + "mlp.up_gate_proj.weight"] = torch.cat([t, native[name.replace("up_proj", "gate_proj")]])
        elif pack_qkv and (q := re.fullmatch(r"self_attn\.q_proj\.(weight|bias)", rest)):
            qkv = [native[name.replace("q_proj", f"{c}_proj")] for c in "qkv"]
            out[f"{layer}attention.qkv_proj.{q[1]}"] = torch.cat(qkv)
        elif rest != "mlp.gate_proj.weight" and not (pack_qkv and re.match(r"self_attn\.[kv]_proj\.", rest)):
            renamed = [re.sub("^" + a, b, rest) for a, b in AUTHORS_NAMES if re.match(a, rest)]
            out[layer + renamed[0]] = t
    return out


def write_authors(folder, ref, hf, prefix="", pack_qkv=True):
    """Turn a transformers checkpoint folder into one in the authors' layout with config `hf`."""
    state = authors_state({n: t.contiguous() for n, t in ref.state_dict().items()}, prefix, pack_qkv)
    (folder / "model.safetensors").unlink()
    save_file(state, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hf))
    return state


def padded_with_types(seqs, pad_id, types=None):
    """conftest.padded plus right-padded token_type_ids (None when types is None)."""
    ids, mask = padded(seqs, pad_id)
    if types is None:
        return ids, mask, None
    tt = torch.zeros_like(ids)
    for i, t in enumerate(types):
        tt[i, : len(t)] = torch.tensor(t)
    return ids, mask, tt


def reference_hidden(model, seqs, pad_id, types=None):
    """transformers on a right-padded batch with an attention mask; returns per-sequence states."""
    ids, mask, tt = padded_with_types(seqs, pad_id, types)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=tt).last_hidden_state
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


def check(folder, expected, seqs, types=None):
    """Our backbone on one packed batch matches `expected`, token by token and CLS-pooled, and
    each sequence alone gives what it gives in the batch."""
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    lengths = [len(s) for s in seqs]
    with torch.no_grad():
        got = ours(PackedBatch.from_sequences(seqs, types)).split(lengths)
        singles = [PackedBatch.from_sequences([s], None if types is None else [types[i]]) for i, s in enumerate(seqs)]
        alone = [ours(b) for b in singles]
    for g, e, a in zip(got, expected, alone, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
        torch.testing.assert_close(a, g, atol=1e-5, rtol=0)
    cls_ours, cls_ref = torch.stack([g[0] for g in got]), torch.stack([e[0] for e in expected])
    torch.testing.assert_close(cls_ours, cls_ref, atol=1e-4, rtol=0)
    return got


# ---- config translation -------------------------------------------------------------------------


def test_to_arch_authors_config():
    arch = gte.to_arch(authors_config())
    assert (arch.positions, arch.rope_theta, arch.rope_scaling, arch.rope_factor) == ("rope", THETA, "ntk_static", NTK)
    assert (arch.max_positions, arch.type_vocab_size, arch.head_dim, arch.norm, arch.norm_placement) == (
        128,
        2,
        12,
        "layer",
        "post",
    )
    assert arch.mlp_gated and arch.activation == "gelu" and not arch.mlp_up_bias and arch.mlp_bias
    assert arch.embed_norm and not arch.final_norm
    plain = gte.to_arch(authors_config(rope_scaling=None, type_vocab_size=0))
    assert (plain.rope_scaling, plain.type_vocab_size) == ("none", 0)


def test_to_arch_rms_norm_keeps_the_embedding_layer_norm():
    arch = gte.to_arch(authors_config(layer_norm_type="rms_norm", layer_norm_eps=1e-6))
    assert (arch.norm, arch.norm_eps, arch.embed_norm, arch.embed_norm_layer) == ("rms", 1e-6, True, True)
    assert gte.to_arch(authors_config()).norm == "layer"


def test_to_arch_defaults_follow_the_config_class():
    minimal = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 4}
    minimal["intermediate_size"] = 64
    new = gte.to_arch({"model_type": "new", **minimal})  # the authors' NewConfig
    assert (new.rope_theta, new.max_positions, new.type_vocab_size, new.norm_eps) == (10000.0, 2048, 1, 1e-12)
    native = gte.to_arch({"model_type": "gte", **minimal})  # transformers' GteConfig
    assert (native.rope_theta, native.max_positions) == (160000.0, 8192)


def test_to_arch_snowflake_config_with_string_booleans():
    hf = authors_config("gte", rope_scaling=None, rope_theta=160000, type_vocab_size=1, logn_attention_clip1="false")
    hf |= {"unpad_inputs": "true", "use_memory_efficient_attention": "true", "pack_qkv": "true"}
    arch = gte.to_arch(hf)
    assert (arch.rope_theta, arch.rope_scaling, arch.type_vocab_size) == (160000.0, "none", 1)


def test_to_arch_transformers_linear_rope_is_static_ntk():
    d = 12
    native = reference_config(authors_config()).to_dict()
    arch = gte.to_arch(native)
    assert arch.rope_scaling == "ntk_static"
    # same frequencies: (θ·f)^(-2i/d) / f^(2/d), with the authors' θ and f recovered
    assert math.isclose(arch.rope_factor, NTK, rel_tol=1e-12) and math.isclose(arch.rope_theta, THETA, rel_tol=1e-12)
    assert arch.head_dim == d


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"logn_attention_scale": True}, "logn_attention_scale"),
        ({"logn_attention_scale": "true"}, "logn_attention_scale"),
        ({"layer_norm_type": "batch_norm"}, "layer_norm_type 'batch_norm'"),
        ({"rope_scaling": {"type": "ntk", "factor": 2.0, "mixed_b": 0.5}}, "static NTK"),
        ({"rope_scaling": {"type": "dynamic", "factor": 2.0}}, "static NTK"),
        ({"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "rope_theta": 1e4}}, "rope_type 'yarn'"),
        ({"hidden_act": "mish"}, "hidden_act"),
        ({"position_embedding_type": "alibi"}, "position_embedding_type"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        gte.to_arch(authors_config(**changes))


# ---- parity with transformers' GteModel ---------------------------------------------------------


@pytest.mark.parametrize(
    "hf, prefix, pack_qkv",
    [
        pytest.param(authors_config(), "", True, id="new-ntk-types2"),
        pytest.param(authors_config(type_vocab_size=0, rope_scaling=None), "new.", True, id="new-prefix-types0"),
        pytest.param(authors_config(pack_qkv=False, hidden_act="gelu_new"), "", False, id="new-separate-qkv-tanh"),
        pytest.param(
            authors_config("gte", type_vocab_size=1, rope_scaling=None, num_hidden_layers=3), "", True, id="snowflake"
        ),
    ],
)
def test_authors_layout_matches_transformers(make_checkpoint, hf, prefix, pack_qkv):
    folder, ref = make_checkpoint(GteModel, reference_config(hf))
    write_authors(folder, ref, hf, prefix, pack_qkv)
    seqs = ragged_ids(LENGTHS, hf["vocab_size"])
    check(folder, reference_hidden(ref, seqs, hf["pad_token_id"]), seqs)


def test_ntk_scaling_changes_the_output(make_checkpoint):
    """The ntk case above is not vacuous: without the scaling the same weights give other states."""
    hf = authors_config()
    folder, ref = make_checkpoint(GteModel, reference_config(hf | {"rope_scaling": None}))
    write_authors(folder, ref, hf)
    seqs = ragged_ids([40], hf["vocab_size"])
    ours, _ = load_backbone(read_snapshot(folder))
    with torch.no_grad():
        diff = (ours(PackedBatch.from_sequences(seqs)) - reference_hidden(ref, seqs, 1)[0]).abs().max()
    assert diff > 1e-2


@pytest.mark.parametrize(
    "rope, changes, original_format",
    [
        pytest.param({"rope_type": "default", "rope_theta": THETA}, {}, False, id="native-names"),
        pytest.param(
            {"rope_type": "linear", "factor": 1.5, "rope_theta": THETA},
            {"type_vocab_size": 0},
            True,
            id="saved-original-names-linear-types0",
        ),
        pytest.param({"rope_type": "default", "rope_theta": THETA}, {"head_dim": 16}, False, id="native-head-dim-16"),
    ],
)
def test_transformers_layout_matches_transformers(make_checkpoint, rope, changes, original_format):
    """transformers' own config (rope_parameters) and weights, as save_pretrained writes them: its own names
    (save_original_format=False) or, by default, the authors' names."""
    options = dict(max_position_embeddings=128, type_vocab_size=2, initializer_range=INIT) | changes
    config = GteConfig(**SIZES, rope_parameters=rope, **options)
    folder, ref = make_checkpoint(GteModel, config, save_original_format=original_format)
    seqs = ragged_ids(LENGTHS, config.vocab_size, seed=2)
    check(folder, reference_hidden(ref, seqs, config.pad_token_id), seqs)


def test_token_type_ids_match_transformers(make_checkpoint):
    hf = authors_config()
    folder, ref = make_checkpoint(GteModel, reference_config(hf))
    write_authors(folder, ref, hf)
    seqs = ragged_ids([6, 9, 1], hf["vocab_size"])
    types = [[0, 0, 0, 1, 1, 1], [0] * 4 + [1] * 5, [1]]
    check(folder, reference_hidden(ref, seqs, 1, types), seqs, types)


@pytest.mark.parametrize("authors_layout", [True, False], ids=["new-prefix", "transformers-gte-prefix"])
def test_reranker_head_matches_transformers(make_checkpoint, authors_layout):
    hf = authors_config(architectures=["NewForSequenceClassification"], num_labels=1, id2label={"0": "LABEL_0"})
    config = reference_config(hf)
    config.num_labels = 1
    folder, ref = make_checkpoint(GteForSequenceClassification, config)
    if authors_layout:
        state = write_authors(folder, ref, hf, prefix="new.")
        assert "new.pooler.dense.weight" in state and "classifier.weight" in state
    lengths = [3, 12, 1, 30]
    seqs = ragged_ids(lengths, hf["vocab_size"], seed=1)
    ids, mask = padded(seqs, 1)
    backbone, head = load_backbone(read_snapshot(folder))
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = head(backbone(batch)[batch.cu_seqlens[:-1].long()])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    embedder, no_head = load_backbone(read_snapshot(folder), with_head=False)
    assert no_head is None and len(embedder.layers) == hf["num_hidden_layers"]


def test_sparse_token_classifier_is_dropped_as_embedder(make_checkpoint):
    """gte-multilingual-base: NewForTokenClassification with a [1, D] classifier; the embedder ignores it."""
    hf = authors_config(architectures=["NewForTokenClassification"], type_vocab_size=1, rope_scaling=None)
    config = reference_config(hf)
    config.num_labels = 1
    folder, ref = make_checkpoint(GteForTokenClassification, config)
    state = write_authors(folder, ref, hf, prefix="new.")
    assert state["classifier.weight"].shape == (1, SIZES["hidden_size"])
    seqs = ragged_ids([5, 20, 2], hf["vocab_size"], seed=3)
    check(folder, reference_hidden(ref.gte, seqs, 1), seqs)


# ---- the authors' forward, for what transformers' GteModel lacks --------------------------------


def authors_forward(state, hf, ids):
    """The authors' NewModel forward (Alibaba-NLP/new-impl modeling.py) for one unpadded sequence from
    tensors in their layout: absolute or rope (static NTK) positions, packed qkv, [up | gate] GeGLU,
    attn_ln / mlp_ln from LAYER_NORM[layer_norm_type] (embeddings.LayerNorm is always nn.LayerNorm)."""
    dim, heads, eps = hf["hidden_size"], hf["num_attention_heads"], hf["layer_norm_eps"]
    d, n = dim // heads, len(ids)

    def layer_norm(x, name):
        return F.layer_norm(x, (dim,), state[name + ".weight"], state[name + ".bias"], eps)

    def rms_norm(x, name):  # their RMSNorm.forward: fp32, x * rsqrt(mean(x^2) + eps), cast back, * weight
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
        return state[name + ".weight"] * x32.to(x.dtype)

    norm = rms_norm if hf["layer_norm_type"] == "rms_norm" else layer_norm

    h = state["embeddings.word_embeddings.weight"][ids] + state["embeddings.token_type_embeddings.weight"][0]
    if hf["position_embedding_type"] == "absolute":
        h = h + state["embeddings.position_embeddings.weight"][:n]
    h = layer_norm(h, "embeddings.LayerNorm")
    f = (hf["rope_scaling"] or {"factor": 1.0})["factor"]
    inv_freq = 1.0 / (hf["rope_theta"] * f) ** (torch.arange(0, d, 2).float() / d) / f ** (2 / d)
    angles = torch.arange(n).float()[:, None] * inv_freq
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
    for i in range(hf["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        qkv = F.linear(h, state[p + "attention.qkv_proj.weight"], state[p + "attention.qkv_proj.bias"])
        q, k, v = qkv.view(n, 3, heads, d).unbind(1)
        if hf["position_embedding_type"] == "rope":
            q, k = (x * cos + torch.cat([-x[..., d // 2 :], x[..., : d // 2]], -1) * sin for x in (q, k))
        a = F.scaled_dot_product_attention(*(x.transpose(0, 1) for x in (q, k, v))).transpose(0, 1).reshape(n, dim)
        attn = F.linear(a, state[p + "attention.o_proj.weight"], state[p + "attention.o_proj.bias"])
        h = norm(h + attn, p + "attn_ln")
        up, gate = F.linear(h, state[p + "mlp.up_gate_proj.weight"]).chunk(2, dim=-1)
        mlp = F.linear(F.gelu(gate) * up, state[p + "mlp.down_proj.weight"], state[p + "mlp.down_proj.bias"])
        h = norm(h + mlp, p + "mlp_ln")
    return h


RMS = {"layer_norm_type": "rms_norm", "layer_norm_eps": 1e-6}
ABSOLUTE = {"position_embedding_type": "absolute", "rope_scaling": None}


def rms_state(state, seed=6):
    """The authors' rms_norm layout: attn_ln / mlp_ln hold a weight only (here random, around 1);
    embeddings.LayerNorm keeps weight and bias (made random too, so that it matters)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, t in state.items():
        if re.search(r"\.(?:attn_ln|mlp_ln)\.bias$", name):
            continue
        if re.search(r"(?:attn_ln|mlp_ln|LayerNorm)\.weight$", name):
            t = 1 + 0.3 * torch.randn(t.shape, generator=g)
        elif name.endswith("LayerNorm.bias"):
            t = 0.3 * torch.randn(t.shape, generator=g)
        out[name] = t
    return out


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param(ABSOLUTE, id="absolute"),
        pytest.param({}, id="rope-ntk"),
        pytest.param(RMS, id="rms-norm-rope-ntk"),
        pytest.param(RMS | ABSOLUTE, id="rms-norm-absolute"),
    ],
)
def test_authors_forward_matches(tmp_path, make_checkpoint, changes):
    """Against the authors' own formulas: absolute positions and layer_norm_type rms_norm (no transformers
    class has them) and, as a cross-check of the transformers-based reference, static NTK rope."""
    hf = authors_config(**changes)
    folder, ref = make_checkpoint(GteModel, reference_config(authors_config()))
    state = write_authors(folder, ref, hf)
    if hf["position_embedding_type"] == "absolute":
        g = torch.Generator().manual_seed(5)
        rows, dim = hf["max_position_embeddings"], SIZES["hidden_size"]
        state["embeddings.position_embeddings.weight"] = torch.randn(rows, dim, generator=g)
    if hf["layer_norm_type"] == "rms_norm":
        state = rms_state(state)
    save_file(state, folder / "model.safetensors")
    seqs = ragged_ids(LENGTHS, hf["vocab_size"], seed=4)
    with torch.no_grad():
        expected = [authors_forward(state, hf, s) for s in seqs]
    got = check(folder, expected, seqs)
    if hf["layer_norm_type"] == "rms_norm":  # not vacuous: LayerNorm blocks (zero bias) give other states
        as_layer_norm = state | {
            n.replace(".weight", ".bias"): torch.zeros_like(t) for n, t in state.items() if "_ln." in n
        }
        with torch.no_grad():
            other = authors_forward(as_layer_norm, hf | {"layer_norm_type": "layer_norm"}, seqs[1])
        assert (other - got[1]).abs().max() > 1e-2


def test_rms_norm_model_layout(make_checkpoint):
    """rms_norm: the embedding norm is a LayerNorm with a bias, every block norm a weight-only RMSNorm with
    layer_norm_eps; a stray attn_ln.bias is refused by strict loading."""
    hf = authors_config(**RMS)
    folder, ref = make_checkpoint(GteModel, reference_config(authors_config()))
    state = rms_state(write_authors(folder, ref, hf))
    save_file(state, folder / "model.safetensors")
    ours, _ = load_backbone(read_snapshot(folder))
    assert isinstance(ours.embed.norm, torch.nn.LayerNorm) and ours.embed.norm.bias is not None
    for layer in ours.layers:
        for norm in (layer.norm_attn, layer.norm_mlp):
            assert isinstance(norm, torch.nn.RMSNorm) and norm.eps == 1e-6
            assert [n for n, _ in norm.named_parameters()] == ["weight"]
    save_file(state | {"encoder.layer.0.attn_ln.bias": torch.zeros(SIZES["hidden_size"])}, folder / "model.safetensors")
    with pytest.raises(WeightMismatch, match=r"layers\.0\.norm_attn\.bias"):
        load_backbone(read_snapshot(folder))

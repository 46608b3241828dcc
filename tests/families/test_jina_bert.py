"""jina-bert-v2: config translation, and parity against a reference written here from the spec.

transformers has no jina-bert-v2, so the reference below is a padded, per-sequence fp32 forward computed
straight from the checkpoint tensors by name (FAMILIES.md §4): embeddings (word + token type, no
positions) → LayerNorm; per layer h = LN(h + dense(softmax(q·kᵀ/√d − slope_h·|i − j|)·v));
g = gated_layers(h); h = LN(h + wo(act(g[:I]) * g[I:])). The ALiBi slopes are computed here too.
The -code layer (remote code jinaai/jina-bert-v2-qk-post-norm): q, k = layer_norm_q(query(h)),
layer_norm_k(key(h)) over the whole vector before the head split; a = LN(h + dense(attn));
h = layer_norm_1(h + a); u = up_gated_layer(h); h = layer_norm_2(h + down_layer(u[:I] * act(u[I:]))).
"""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import jina_bert
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch

ACTS = {"geglu": lambda x: F.gelu(x), "reglu": F.relu}


def spec_slopes(heads):
    """ALiBi slopes per FAMILIES.md §4: powers of two start^(k+1), start = 2^(-8/H); otherwise the list for
    P = 2^floor(log2 H), then elements 0, 2, 4, … of the list for 2P."""

    def pow2(n):
        start = 2 ** (-8 / n)
        return [start ** (k + 1) for k in range(n)]

    p = 2 ** int(math.floor(math.log2(heads)))
    return pow2(p) if p == heads else pow2(p) + pow2(2 * p)[0::2][: heads - p]


def test_spec_slopes_known_values():
    assert spec_slopes(4) == [2**-2, 2**-4, 2**-6, 2**-8]
    assert spec_slopes(6) == [2**-2, 2**-4, 2**-6, 2**-8, 2**-1, 2**-3]
    assert spec_slopes(12) == pytest.approx([2**-k for k in range(1, 9)] + [2**-e for e in (0.5, 1.5, 2.5, 3.5)])


def hf_config(heads=4, hidden=32, layers=2, inter=48, **changes):
    cfg = {
        "model_type": "bert",
        "architectures": ["JinaBertModel"],
        "vocab_size": 120,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "intermediate_size": inter,
        "type_vocab_size": 2,
        "max_position_embeddings": 8192,
        "layer_norm_eps": 1e-12,
        "hidden_act": "gelu",
        "position_embedding_type": "alibi",
        "feed_forward_type": "geglu",
        "pad_token_id": 0,
        "emb_pooler": "mean",
    }
    return cfg | changes


def test_to_arch():
    arch = jina_bert.to_arch(hf_config(heads=6, hidden=48))
    assert (arch.positions, arch.max_positions, arch.head_dim, arch.type_vocab_size) == ("alibi", 8192, 8, 2)
    assert (arch.mlp_gated, arch.mlp_bias, arch.mlp_up_bias, arch.activation) == (True, True, False, "gelu")
    assert (arch.norm_placement, arch.embed_norm, arch.qkv_bias, arch.out_bias) == ("post", True, True, True)
    assert jina_bert.to_arch(hf_config(feed_forward_type="reglu", hidden_act="gelu_new")).activation == "relu"


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding_type": "absolute"}, "only 'alibi'"),
        ({"feed_forward_type": "original"}, r"feed_forward_type 'original'; supported: \['geglu', 'reglu'\]"),
        ({"feed_forward_type": "swiglu"}, "supported"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        jina_bert.to_arch(hf_config(**changes))


def random_state(cfg, prefix="", seed=0, head=False, extras=True, code=False):
    """Checkpoint tensors in jina-bert-v2 naming (bert-style LayerNorm weights near 1); code: the -code layout."""
    g = torch.Generator().manual_seed(seed)
    d, inter, v, t = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"], cfg["type_vocab_size"]

    def rnd(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    def norm(name):
        return {f"{name}.weight": 1 + rnd(d, scale=0.1), f"{name}.bias": rnd(d, scale=0.1)}

    sd = {"embeddings.word_embeddings.weight": rnd(v, d, scale=1.0)}
    sd["embeddings.token_type_embeddings.weight"] = rnd(t, d, scale=1.0)
    sd |= norm("embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            sd[f"{layer}attention.self.{name}.weight"] = rnd(d, d)
            sd[f"{layer}attention.self.{name}.bias"] = rnd(d)
        sd[f"{layer}attention.output.dense.weight"] = rnd(d, d)
        sd[f"{layer}attention.output.dense.bias"] = rnd(d)
        sd |= norm(f"{layer}attention.output.LayerNorm")
        if code:
            sd |= norm(f"{layer}attention.self.layer_norm_q") | norm(f"{layer}attention.self.layer_norm_k")
            sd |= norm(f"{layer}layer_norm_1") | norm(f"{layer}layer_norm_2")
            sd[f"{layer}mlp.up_gated_layer.weight"] = rnd(2 * inter, d)
            sd[f"{layer}mlp.down_layer.weight"] = rnd(d, inter)
            sd[f"{layer}mlp.down_layer.bias"] = rnd(d)
            continue
        sd[f"{layer}mlp.gated_layers.weight"] = rnd(2 * inter, d)
        sd[f"{layer}mlp.wo.weight"] = rnd(d, inter)
        sd[f"{layer}mlp.wo.bias"] = rnd(d)
        sd |= norm(f"{layer}mlp.layernorm")
    if head or extras:  # embedders saved from JinaBertModel carry the pooler too
        sd["pooler.dense.weight"], sd["pooler.dense.bias"] = rnd(d, d), rnd(d)
    sd = {prefix + k: t for k, t in sd.items()}
    if head:
        sd["classifier.weight"], sd["classifier.bias"] = rnd(1, d, scale=1.0), rnd(1)
    if extras:  # masked-LM head and buffers that some checkpoints carry
        sd["cls.predictions.transform.dense.weight"] = rnd(d, d)
        sd["cls.predictions.bias"] = rnd(v)
        sd[prefix + "embeddings.position_ids"] = torch.arange(cfg["max_position_embeddings"])[None]
    return sd


def write_checkpoint(folder, cfg, sd):
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    save_file({k: t.contiguous() for k, t in sd.items()}, folder / "model.safetensors")
    return folder


def reference_hidden(sd, cfg, seqs, types=None, prefix="", code=False):
    """Padded fp32 forward from the raw tensors; returns each sequence's token states [n, D].

    code: the jina-bert-v2-qk-post-norm layer (jina-embeddings-v2-base-code)."""

    def w(name):
        return sd[prefix + name]

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], w(name + ".weight"), w(name + ".bias"), cfg["layer_norm_eps"])

    def linear(x, name, bias=True):
        return x @ w(name + ".weight").T + (w(name + ".bias") if bias else 0)

    heads, d_model, inter = cfg["num_attention_heads"], cfg["hidden_size"], cfg["intermediate_size"]
    d = d_model // heads
    width, batch = max(map(len, seqs)), len(seqs)
    ids = torch.zeros(batch, width, dtype=torch.long)
    tt = torch.zeros(batch, width, dtype=torch.long)
    keep = torch.zeros(batch, width, dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids[b, : len(s)], keep[b, : len(s)] = torch.tensor(s), True
        if types is not None:
            tt[b, : len(s)] = torch.tensor(types[b])
    slopes = torch.tensor(spec_slopes(heads), dtype=torch.float64)
    idx = torch.arange(width)
    alibi = (-slopes[:, None, None] * (idx[:, None] - idx[None, :]).abs()).float()  # [H, S, S]
    mask = torch.zeros(batch, 1, 1, width).masked_fill(~keep[:, None, None, :], float("-inf"))
    act = ACTS[cfg["feed_forward_type"]]

    def split(x):
        return x.view(batch, width, heads, d).transpose(1, 2)  # [B, S, D] -> [B, H, S, d]

    h = w("embeddings.word_embeddings.weight")[ids] + w("embeddings.token_type_embeddings.weight")[tt]
    h = ln(h, "embeddings.LayerNorm")
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (linear(h, p + f"attention.self.{n}") for n in ("query", "key", "value"))
        if code:  # LayerNorm over the whole projected q and k, before the head split
            q, k = ln(q, p + "attention.self.layer_norm_q"), ln(k, p + "attention.self.layer_norm_k")
        q, k, v = split(q), split(k), split(v)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + alibi + mask
        ctx = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, width, d_model)
        a = ln(h + linear(ctx, p + "attention.output.dense"), p + "attention.output.LayerNorm")
        if code:
            h = ln(h + a, p + "layer_norm_1")
            u = linear(h, p + "mlp.up_gated_layer", bias=False)
            y = u[..., :inter] * act(u[..., inter:])  # activation on the SECOND half
            h = ln(h + linear(y, p + "mlp.down_layer"), p + "layer_norm_2")
            continue
        h = a
        g = linear(h, p + "mlp.gated_layers", bias=False)
        y = act(g[..., :inter]) * g[..., inter:]
        h = ln(h + linear(y, p + "mlp.wo"), p + "mlp.layernorm")
    return [h[b, : len(s)] for b, s in enumerate(seqs)]


def ragged_ids(lengths, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(1, vocab, (n,), generator=g).tolist() for n in lengths]


LENGTHS = [1, 40, 7, 2, 33, 1, 17, 40, 5, 12]
CASES = [
    pytest.param(hf_config(), "", id="h4-geglu"),
    pytest.param(hf_config(heads=6, hidden=48, inter=40, layers=3), "bert.", id="h6-geglu-prefixed"),
    pytest.param(hf_config(feed_forward_type="reglu", type_vocab_size=1), "", id="h4-reglu"),
]


@pytest.mark.parametrize("cfg, prefix", CASES)
def test_backbone_matches_spec_reference(tmp_path, cfg, prefix):
    sd = random_state(cfg, prefix=prefix)
    ours, head = load_backbone(read_snapshot(write_checkpoint(tmp_path / "ckpt", cfg, sd)))
    assert head is None
    seqs = ragged_ids(LENGTHS, cfg["vocab_size"])
    with torch.no_grad():
        expected = reference_hidden(sd, cfg, seqs, prefix=prefix)
        got = ours(PackedBatch.from_sequences(seqs)).split(LENGTHS)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
    mean_ours = torch.stack([g.mean(0) for g in got])
    torch.testing.assert_close(mean_ours, torch.stack([e.mean(0) for e in expected]), atol=1e-4, rtol=0)


def test_token_types_and_flex_backend(tmp_path):
    cfg = hf_config(heads=6, hidden=48)
    sd = random_state(cfg, extras=False)
    folder = write_checkpoint(tmp_path / "ckpt", cfg, sd)
    lengths = [6, 9, 1]
    seqs = ragged_ids(lengths, cfg["vocab_size"], seed=3)
    types = [[0, 0, 0, 1, 1, 1], [0] * 4 + [1] * 5, [1]]
    with torch.no_grad():
        want = torch.cat(reference_hidden(sd, cfg, seqs, types))
        for backend in ("sdpa", "flex"):
            ours, _ = load_backbone(read_snapshot(folder), attn_backend=backend)
            torch.testing.assert_close(ours(PackedBatch.from_sequences(seqs, types)), want, atol=1e-4, rtol=0)


def test_reranker_head_matches_spec(tmp_path):
    """jina-reranker-v1: logits = classifier(tanh(pooler.dense(h_CLS)))."""
    cfg = hf_config(architectures=["JinaBertForSequenceClassification"], id2label={"0": "LABEL_0"})
    sd = random_state(cfg, prefix="bert.", head=True, seed=1)
    folder = write_checkpoint(tmp_path / "ckpt", cfg, sd)
    backbone, head = load_backbone(read_snapshot(folder))
    assert head is not None
    lengths = [3, 12, 1, 30]
    seqs = ragged_ids(lengths, cfg["vocab_size"], seed=1)
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        cls = torch.stack([h[0] for h in reference_hidden(sd, cfg, seqs, prefix="bert.")])
        pooled = torch.tanh(cls @ sd["bert.pooler.dense.weight"].T + sd["bert.pooler.dense.bias"])
        want = pooled @ sd["classifier.weight"].T + sd["classifier.bias"]
        got = head(backbone(batch)[batch.cu_seqlens[:-1].long()])
    assert got.shape == (4, 1)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    embedder, none = load_backbone(read_snapshot(folder), with_head=False)
    assert none is None and len(embedder.layers) == cfg["num_hidden_layers"]


CODE_AUTO_MAP = {
    "AutoConfig": "jinaai/jina-bert-v2-qk-post-norm--configuration_bert.JinaBertConfig",
    "AutoModel": "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertModel",
    "AutoModelForMaskedLM": "jinaai/jina-bert-v2-qk-post-norm--modeling_bert.JinaBertForMaskedLM",
}


def code_config(**changes):
    """jina-embeddings-v2-base-code: its auto_map names the qk-post-norm remote code; no other key differs."""
    return hf_config(auto_map=CODE_AUTO_MAP, architectures=["JinaBertForMaskedLM"], **changes)


def test_to_arch_code_variant():
    arch = jina_bert.to_arch(code_config())
    assert (arch.qk_norm, arch.attn_second_norm, arch.mlp_gated, arch.mlp_up_bias) == ("vector", True, True, False)
    tokenizer_list = {"AutoTokenizer": ["jinaai/jina-bert-v2-qk-post-norm--tok.Slow", None]}
    assert jina_bert.to_arch(hf_config(auto_map=tokenizer_list)).qk_norm == "vector"
    other = {"AutoModel": "jinaai/jina-bert-implementation--modeling_bert.JinaBertModel"}
    for plain in (
        hf_config(),
        hf_config(auto_map=other),
        hf_config(_name_or_path="jinaai/jina-bert-v2-qk-post-norm"),  # a load path, not the implementation
    ):
        assert (jina_bert.to_arch(plain).qk_norm, jina_bert.to_arch(plain).attn_second_norm) == ("none", False)


CODE_CASES = [
    pytest.param(code_config(), "", id="code-h4"),
    pytest.param(code_config(heads=6, hidden=48, inter=40, layers=3), "bert.", id="code-h6-prefixed"),
    pytest.param(code_config(feed_forward_type="reglu", type_vocab_size=1), "", id="code-h4-reglu"),
]


@pytest.mark.parametrize("cfg, prefix", CODE_CASES)
def test_code_variant_matches_spec_reference(tmp_path, cfg, prefix):
    sd = random_state(cfg, prefix=prefix, code=True)
    ours, head = load_backbone(read_snapshot(write_checkpoint(tmp_path / "ckpt", cfg, sd)))
    assert head is None
    seqs = ragged_ids(LENGTHS, cfg["vocab_size"], seed=2)
    with torch.no_grad():
        expected = reference_hidden(sd, cfg, seqs, prefix=prefix, code=True)
        got = ours(PackedBatch.from_sequences(seqs)).split(LENGTHS)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
    mean_ours = torch.stack([g.mean(0) for g in got])
    torch.testing.assert_close(mean_ours, torch.stack([e.mean(0) for e in expected]), atol=1e-4, rtol=0)


def test_code_variant_flex_backend(tmp_path):
    cfg = code_config(heads=6, hidden=48)
    sd = random_state(cfg, extras=False, code=True, seed=4)
    folder = write_checkpoint(tmp_path / "ckpt", cfg, sd)
    lengths = [6, 9, 1]
    seqs = ragged_ids(lengths, cfg["vocab_size"], seed=4)
    types = [[0, 0, 0, 1, 1, 1], [0] * 4 + [1] * 5, [1]]
    with torch.no_grad():
        want = torch.cat(reference_hidden(sd, cfg, seqs, types, code=True))
        ours, _ = load_backbone(read_snapshot(folder), attn_backend="flex")
        torch.testing.assert_close(ours(PackedBatch.from_sequences(seqs, types)), want, atol=1e-4, rtol=0)


def test_code_layout_and_config_must_agree(tmp_path):
    cfg = hf_config()  # no auto_map: the plain layer, which has no q/k norms
    with pytest.raises(WeightMismatch, match="attn.q_norm"):
        load_backbone(read_snapshot(write_checkpoint(tmp_path / "code", cfg, random_state(cfg, code=True))))
    cfg = code_config()
    with pytest.raises(WeightMismatch, match="norm_attn2"):
        load_backbone(read_snapshot(write_checkpoint(tmp_path / "plain", cfg, random_state(cfg))))

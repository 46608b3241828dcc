"""XLM-R in Jina's flash layout (jina-reranker-v2-base-multilingual): config translation, routing through
auto_map, and scores against transformers' XLMRobertaForSequenceClassification, whose state dict renamed
into the flash layout makes the checkpoint (a reference written here from the remote code shows the two
compute the same logits)."""

import json
import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import no_type_ids, padded, ragged_ids, reference_logits
from safetensors.torch import load_file, save_file
from transformers import XLMRobertaConfig, XLMRobertaForSequenceClassification

import embzoo
from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import jina_xlm_roberta
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch
from embzoo.registry import family_for

# jina-reranker-v2-base-multilingual's config.json: no model_type, auto_map into its own remote code
AUTO_MAP = {
    "AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig",
    "AutoModel": "modeling_xlm_roberta.XLMRobertaModel",
    "AutoModelForSequenceClassification": "modeling_xlm_roberta.XLMRobertaForSequenceClassification",
}
SMALL = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# transformers' names → the remote code's (query/key/value are fused separately)
RENAMES = [
    (r"embeddings\.LayerNorm\.", "emb_ln."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"encoder.layers.\1.mixer.out_proj."),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"encoder.layers.\1.norm1."),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.", r"encoder.layers.\1.mlp.fc1."),
    (r"encoder\.layer\.(\d+)\.output\.dense\.", r"encoder.layers.\1.mlp.fc2."),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"encoder.layers.\1.norm2."),
]


def flash_config(**changes):
    cfg = dict(SMALL, architectures=["XLMRobertaForSequenceClassification"], auto_map=AUTO_MAP, hidden_act="gelu")
    cfg |= dict(layer_norm_eps=1e-5, max_position_embeddings=66, pad_token_id=1, type_vocab_size=1)
    return cfg | dict(id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0}, use_flash_attn=True, **changes)


def flash_state(sd, layers):
    """A transformers XLM-R state dict under the flash names; mixer.Wqkv = [Q; K; V] rows."""
    out = {}
    for key, t in sd.items():
        if "attention.self." in key or key.endswith(("position_ids", "token_type_ids")):
            continue
        for pattern, repl in RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = t
    for i in range(layers):
        for p in ("weight", "bias"):
            parts = [sd[f"roberta.encoder.layer.{i}.attention.self.{n}.{p}"] for n in ("query", "key", "value")]
            out[f"roberta.encoder.layers.{i}.mixer.Wqkv.{p}"] = torch.cat(parts)
    return out


def to_flash(folder, **changes):
    """Rewrite a transformers XLMRobertaForSequenceClassification folder as jina-reranker-v2 ships it."""
    hf = json.loads((folder / "config.json").read_text())
    cfg = flash_config(**{k: hf[k] for k in ("pad_token_id", "max_position_embeddings", "type_vocab_size")})
    (folder / "config.json").write_text(json.dumps(cfg | changes))
    sd = load_file(folder / "model.safetensors")
    save_file(
        {k: t.contiguous() for k, t in flash_state(sd, cfg["num_hidden_layers"]).items()}, folder / "model.safetensors"
    )
    return folder


def spec_logits(sd, cfg, seqs):
    """The remote code's forward on the flash tensors, right-padded: XLMRobertaEmbeddings (positions from
    create_position_ids_from_input_ids) → emb_ln → post-norm Blocks (MHA on Wqkv split "(three h d)", Mlp
    fc1 → GELU → fc2) → classifier.dense → tanh → out_proj on the first token."""
    pad, eps, heads = cfg["pad_token_id"], cfg["layer_norm_eps"], cfg["num_attention_heads"]
    ids, mask = padded(seqs, pad)
    keep = mask.bool()
    real = (ids != pad).long()  # a literal pad token inside a text is not counted and sits at position pad
    positions = torch.cumsum(real, 1) * real + pad

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    def ln(x, name):
        return F.layer_norm(x, x.shape[-1:], sd[name + ".weight"], sd[name + ".bias"], eps)

    e = "roberta.embeddings."
    h = sd[e + "word_embeddings.weight"][ids] + sd[e + "position_embeddings.weight"][positions]
    h = ln(h + sd[e + "token_type_embeddings.weight"][0], "roberta.emb_ln")
    batch, width, dim = h.shape
    d = dim // heads
    for i in range(cfg["num_hidden_layers"]):
        p = f"roberta.encoder.layers.{i}."
        q, k, v = lin(h, p + "mixer.Wqkv").view(batch, width, 3, heads, d).unbind(2)
        scores = torch.einsum("bthd,bshd->bhts", q, k / math.sqrt(d)).masked_fill(~keep[:, None, None], -1e4)
        ctx = torch.einsum("bhts,bshd->bthd", scores.softmax(-1), v).reshape(batch, width, dim)
        h = ln(h + lin(ctx, p + "mixer.out_proj"), p + "norm1")
        h = ln(h + lin(F.gelu(lin(h, p + "mlp.fc1")), p + "mlp.fc2"), p + "norm2")
    return lin(torch.tanh(lin(h[:, 0], "classifier.dense")), "classifier.out_proj")


def test_to_arch_defaults_and_activations():
    arch = jina_xlm_roberta.to_arch(flash_config())
    assert (arch.position_offset, arch.max_positions, arch.type_vocab_size, arch.activation) == (2, 66, 1, "gelu")
    assert arch.position_pad_id == 1
    assert arch.norm_placement == "post" and arch.norm_eps == 1e-5
    for act in ("gelu_new", "gelu_fast", "gelu_pytorch_tanh"):
        assert jina_xlm_roberta.to_arch(flash_config(hidden_act=act)).activation == "gelu_tanh"
    bare = jina_xlm_roberta.to_arch(SMALL)  # the config class's defaults
    assert (bare.position_offset, bare.max_positions, bare.type_vocab_size, bare.norm_eps) == (2, 512, 2, 1e-12)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding_type": "rotary"}, "jina-embeddings-v3"),
        ({"hidden_act": "relu"}, "supported"),
        ({"pad_token_id": None}, "pad_token_id"),
    ],
)
def test_to_arch_rejects(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        jina_xlm_roberta.to_arch(flash_config(**changes))


def test_auto_map_claims_the_config():
    assert family_for(flash_config()) is jina_xlm_roberta
    hub = {"AutoConfig": "jinaai/xlm-roberta-flash-implementation--configuration_xlm_roberta.XLMRobertaFlashConfig"}
    assert family_for({"model_type": "xlm-roberta", "auto_map": hub}) is jina_xlm_roberta  # ahead of model_type
    assert family_for({"model_type": "xlm-roberta"}).__name__.endswith(".bert")
    with pytest.raises(UnsupportedConfig, match="XLMRobertaFlashConfig"):
        family_for({k: v for k, v in flash_config().items() if k != "auto_map"})


@pytest.fixture
def flash_checkpoint(make_checkpoint):
    """A transformers XLM-R classifier (pad 1: positions from 2, as the real checkpoint) and its flash copy."""
    config = XLMRobertaConfig(**SMALL, max_position_embeddings=66, type_vocab_size=1, layer_norm_eps=1e-5)
    config.num_labels, config.initializer_range = 1, 0.2
    folder, ref = make_checkpoint(XLMRobertaForSequenceClassification, config, noise=0.1)
    return to_flash(folder), ref


def test_backbone_and_head_match_transformers_and_the_remote_code(flash_checkpoint):
    folder, ref = flash_checkpoint
    cfg = json.loads((folder / "config.json").read_text())
    backbone, head = load_backbone(read_snapshot(folder))
    lengths = [3, 12, 1, 30, 64]
    seqs = ragged_ids(lengths, cfg["vocab_size"], seed=1)
    seqs[3][5] = seqs[4][1] = cfg["pad_token_id"]  # literal pad tokens inside texts
    batch = PackedBatch.from_sequences(seqs)
    ids, mask = padded(seqs, cfg["pad_token_id"])
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        spec = spec_logits(load_file(folder / "model.safetensors"), cfg, seqs)
        got = head(backbone(batch)[batch.cu_seqlens[:-1].long()])
    torch.testing.assert_close(spec, want, atol=1e-5, rtol=0)  # the flash layout computes XLM-R
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


PAIRS = [
    ("how do rotary position embeddings work?", "Rotary embeddings rotate query and key vectors."),
    ("how do rotary position embeddings work?", "A rope is a length of fibres twisted together."),
    ("how do rotary position embeddings work?", ""),
    ("short", "Position information " * 30),  # cut to the limit, longest first
]


def test_reranker_scores_match_transformers(make_checkpoint, monkeypatch):
    # MiniLM's tokenizer pads with 0; XLM-R positions then start at 1 (the real one: pad 1, from 2)
    config = XLMRobertaConfig(**SMALL, max_position_embeddings=66, pad_token_id=0, type_vocab_size=1, num_labels=1)
    config.initializer_range = 0.2
    folder, ref = make_checkpoint(XLMRobertaForSequenceClassification, config, noise=0.1)
    to_flash(folder)
    no_type_ids(folder)  # as XLM-R's tokenizer
    asked = []  # transformers asks on stdin before running a config.json's auto_map code; embzoo runs none
    monkeypatch.setattr("builtins.input", lambda *a: asked.append(a) or "n")
    reranker = embzoo.load(folder, device="cpu", max_seq_length=40)
    assert not asked
    assert isinstance(reranker, embzoo.Reranker)
    want = reference_logits(folder, ref, PAIRS, 40)
    logits = reranker.score(PAIRS, activation="none")
    torch.testing.assert_close(torch.from_numpy(logits), want, atol=1e-4, rtol=0)
    # compute_score's activation: sigmoid, also embzoo's default without sentence-transformers files
    np.testing.assert_allclose(reranker.score(PAIRS), torch.sigmoid(want).numpy(), atol=1e-5, rtol=0)
    assert [r["index"] for r in reranker.rank(PAIRS[0][0], [d for _, d in PAIRS[:3]])] == list(
        np.argsort(-logits[:3], kind="stable")
    )


def test_transformers_layout_under_the_flash_config_fails_strictly(make_checkpoint):
    config = XLMRobertaConfig(**SMALL, max_position_embeddings=66, type_vocab_size=1, num_labels=1)
    folder, _ = make_checkpoint(XLMRobertaForSequenceClassification, config)
    (folder / "config.json").write_text(json.dumps(flash_config()))
    with pytest.raises(WeightMismatch, match="mixer.Wqkv|attn.qkv"):
        load_backbone(read_snapshot(folder))

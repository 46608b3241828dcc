"""NV-Embed: config translation, the latent-attention pooler against a reference written from the remote
code (padded batch, plain einsum/softmax, masked mean), and a tiny Hub-layout checkpoint loaded with
embzoo.load against transformers' MistralModel run bidirectionally + that reference, normalized."""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import MINILM_TOKENIZER_FILES, padded, ragged_ids
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, MistralConfig, MistralModel

import embzoo
from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import nv_embed
from embzoo.conversion.inspect import inspect_checkpoint
from embzoo.conversion.load import load_pooler
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch

# the backbone is tiny but keeps MiniLM's vocabulary (the test tokenizer); sliding_window 4 is shorter
# than the inputs, so a window wrongly kept would change the output
TEXT = dict(vocab_size=30522, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TEXT |= dict(num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-5, sliding_window=4)
# cross heads 4 × 24 wide: the width is cross_dim_head, not hidden / heads
LATENT = dict(model_type="latent_attention", num_latents_value=6, num_cross_heads=4, hidden_dim=32, latent_dim=32)
LATENT |= dict(cross_dim_head=24, output_normalize=True)
PREFIX = "latent_attention_model."
BLOCK = PREFIX + "cross_attend_blocks."
PROMPT = "Instruct: Given a question, retrieve passages that answer the question\nQuery: "
TEXTS = ["are judo throws allowed in wrestling?", "ok", "how to become a radiology technician in michigan?"]

# nvidia/NV-Embed-v2's config.json, trimmed to what embzoo reads
V2 = {
    "model_type": "nvembed",
    "architectures": ["NVEmbedModel"],
    "padding_side": "right",
    "is_mask_instruction": True,
    "add_eos": True,
    "latent_attention_config": {
        "model_type": "latent_attention",
        "num_latents_value": 512,
        "num_cross_heads": 8,
        "output_normalize": True,
        "hidden_dim": 4096,
        "latent_dim": 4096,
        "cross_dim_head": 4096,
    },
    "text_config": {
        "model_type": "bidir_mistral",
        "vocab_size": 32000,
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "hidden_act": "silu",
        "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "sliding_window": 4096,
    },
}


def config_json() -> dict:
    text = MistralConfig(**TEXT).to_dict() | {"model_type": "bidir_mistral"}
    return {**V2, "latent_attention_config": LATENT, "text_config": text}


def latent_state(seed: int = 1) -> dict[str, torch.Tensor]:
    """Random latent_attention_model.* tensors in the remote code's names and shapes."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.2, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    d, inner, ff = 32, 4 * 24, 4 * 32
    sd = {PREFIX + "latents": rnd(6, d, scale=1.0)}
    for norm in ("0.norm", "0.norm_context", "1.norm"):
        sd[f"{BLOCK}{norm}.weight"], sd[f"{BLOCK}{norm}.bias"] = rnd(d, scale=0.1, offset=1.0), rnd(d, scale=0.1)
    sd[BLOCK + "0.fn.to_q.weight"] = rnd(inner, d)
    sd[BLOCK + "0.fn.to_kv.weight"] = rnd(2 * inner, d)
    sd[BLOCK + "0.fn.to_out.weight"] = rnd(d, inner)
    sd[BLOCK + "1.fn.net.0.weight"], sd[BLOCK + "1.fn.net.0.bias"] = rnd(2 * ff, d), rnd(2 * ff)
    sd[BLOCK + "1.fn.net.2.weight"], sd[BLOCK + "1.fn.net.2.bias"] = rnd(d, ff), rnd(d)
    return sd


def reference_pool(sd: dict[str, torch.Tensor], h: torch.Tensor, pool_mask: torch.Tensor, heads: int) -> torch.Tensor:
    """The remote code's LatentAttentionModel on a padded batch h [B, S, D] and its pool_mask [B, S]."""

    def ln(x, name):
        return F.layer_norm(x, (x.shape[-1],), sd[name + ".weight"], sd[name + ".bias"], eps=1e-5)

    q = ln(h, BLOCK + "0.norm") @ sd[BLOCK + "0.fn.to_q.weight"].T
    latents = ln(sd[PREFIX + "latents"], BLOCK + "0.norm_context")
    k, v = (latents @ sd[BLOCK + "0.fn.to_kv.weight"].T).chunk(2, dim=-1)
    b, s, inner = q.shape
    width = inner // heads
    q, k, v = q.view(b, s, heads, width), k.view(-1, heads, width), v.view(-1, heads, width)
    weights = torch.softmax(torch.einsum("bshd,nhd->bhsn", q, k) / width**0.5, dim=-1)
    h = h + torch.einsum("bhsn,nhd->bshd", weights, v).reshape(b, s, inner) @ sd[BLOCK + "0.fn.to_out.weight"].T
    x, gate = (ln(h, BLOCK + "1.norm") @ sd[BLOCK + "1.fn.net.0.weight"].T + sd[BLOCK + "1.fn.net.0.bias"]).chunk(2, -1)
    h = h + (x * F.gelu(gate)) @ sd[BLOCK + "1.fn.net.2.weight"].T + sd[BLOCK + "1.fn.net.2.bias"]
    m = pool_mask.unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


@pytest.fixture
def checkpoint(tmp_path, tokenizer_dir):
    """A tiny NV-Embed folder in the Hub layout; returns it, the transformers backbone and the latent tensors."""
    torch.manual_seed(0)
    mistral = MistralModel(MistralConfig(**TEXT, attn_implementation="eager")).eval()
    with torch.no_grad():  # transformers' init (std 0.02) leaves attention near uniform; widen it
        for name, p in mistral.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.2)
    latents = latent_state()
    folder = tmp_path / "nv-embed"
    folder.mkdir()
    state = {"embedding_model." + n: t.contiguous() for n, t in mistral.state_dict().items()}
    save_file(state | latents, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(config_json()))
    for f in MINILM_TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / f, folder / f)
    return folder, mistral, latents


def test_to_arch_v2():
    a = nv_embed.to_arch(V2)
    assert (a.hidden_size, a.num_layers, a.num_heads, a.num_kv_heads, a.head_dim) == (4096, 32, 32, 8, 128)
    assert (a.intermediate_size, a.vocab_size, a.rope_theta, a.norm_eps) == (14336, 32000, 1e4, 1e-5)
    assert (a.causal, a.layer_types, a.local_window, a.max_positions) == (False, (), 0, 32768)
    assert (a.norm, a.norm_placement, a.final_norm, a.mlp_gated, a.qkv_bias) == ("rms", "pre", True, True, False)


def test_pooler_v2_shapes_and_flags():
    with torch.device("meta"):
        p = nv_embed.pooler(V2)
    shapes = {n: tuple(t.shape) for n, t in p.state_dict().items()}
    assert shapes["latents"] == (512, 4096)
    assert (shapes["attn.q.weight"], shapes["attn.kv.weight"]) == ((32768, 4096), (65536, 4096))
    assert (shapes["attn.out.weight"], shapes["mlp.up.weight"]) == ((4096, 32768), (32768, 4096))
    assert (shapes["mlp.down.weight"], shapes["mlp.down.bias"], shapes["norm_latents.bias"]) == (
        (4096, 16384),
        (4096,),
        (4096,),
    )
    assert (p.include_prompt, p.output_normalize, p.output_dim(4096), p.name) == (False, True, 4096, "latent_attention")
    with torch.device("meta"):
        # the remote code masks the instruction only with right padding and is_mask_instruction
        assert nv_embed.pooler(V2 | {"is_mask_instruction": False}).include_prompt
        assert nv_embed.pooler(V2 | {"padding_side": "left"}).include_prompt
        # absent keys: the remote code's LatentAttentionConfig defaults (NV-Embed-v2's values)
        default = nv_embed.pooler({k: v for k, v in V2.items() if k != "latent_attention_config"})
    assert {n: tuple(t.shape) for n, t in default.state_dict().items()} == shapes


@pytest.mark.parametrize(
    "convert, changes, message",
    [
        (nv_embed.to_arch, {"text_config": None}, "no text_config"),
        (nv_embed.pooler, {"text_config": None}, "no text_config"),
        (nv_embed.to_arch, {"text_config": V2["text_config"] | {"model_type": "llama"}}, "bidir_mistral"),
        (nv_embed.to_arch, {"text_config": V2["text_config"] | {"rope_scaling": {"rope_type": "yarn"}}}, "unscaled"),
        (nv_embed.pooler, {"latent_attention_config": LATENT | {"latent_dim": 1024}}, "latent_dim 1024"),
        (nv_embed.pooler, {"latent_attention_config": LATENT | {"hidden_dim": 64}}, "hidden_dim 64"),
    ],
)
def test_unsupported_configs_are_rejected(convert, changes, message):
    with pytest.raises(UnsupportedConfig, match=message), torch.device("meta"):
        convert(V2 | changes)


@pytest.mark.parametrize("prompt_lengths", [None, [1, 0, 3, 2, 0]])
def test_pooler_matches_reference(checkpoint, prompt_lengths):
    folder, _, latents = checkpoint
    pooler = load_pooler(read_snapshot(folder))
    lengths = [3, 1, 7, 5, 2]
    torch.manual_seed(2)
    h = torch.randn(sum(lengths), 32)
    cu = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int32)
    skip = None if prompt_lengths is None else torch.tensor(prompt_lengths, dtype=torch.int32)
    with torch.no_grad():
        got = pooler(h, cu, skip)
    rows = list(h.split(lengths))
    hp = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True)
    mask = padded([[1] * n for n in lengths])[1]
    for b, n in enumerate(prompt_lengths or []):
        mask[b, :n] = 0  # the instruction's tokens are left out of the mean
    want = reference_pool(latents, hp, mask, heads=4)
    diff = (got - want).abs().max().item()
    assert got.dtype == torch.float32 and got.shape == (5, 32)
    assert diff < 1e-4, diff


def bidirectional_reference(mistral, latents, seqs, prompt_tokens):
    """MistralModel with a prepared bidirectional padding mask (as the remote code builds it), then the
    reference pooler with the first prompt_tokens tokens of each sequence masked, L2-normalized."""
    ids, mask = padded(seqs)
    additive = (1.0 - mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
    with torch.no_grad():
        h = mistral(input_ids=ids, attention_mask=additive).last_hidden_state
    pool_mask = mask.clone()
    pool_mask[:, :prompt_tokens] = 0
    return F.normalize(reference_pool(latents, h, pool_mask, heads=4), dim=-1)


@pytest.mark.parametrize("prompt", [None, PROMPT])
def test_load_matches_bidirectional_mistral_and_reference_pooler(checkpoint, prompt):
    folder, mistral, latents = checkpoint
    model = embzoo.load(folder, device="cpu")
    assert (model.dimension, model.normalize, model.model.pooler.name) == (32, True, "latent_attention")
    assert "pooling='latent_attention'" in repr(model)
    tok = AutoTokenizer.from_pretrained(str(folder))
    seqs = [tok((prompt or "") + t)["input_ids"] for t in TEXTS]
    # [CLS] and the prompt's tokens (the tokenizer's trailing [SEP] is not part of the prompt)
    prompt_tokens = len(tok(prompt)["input_ids"]) - 1 if prompt else 0
    want = bidirectional_reference(mistral, latents, seqs, prompt_tokens)
    got = torch.from_numpy(model.encode(TEXTS, prompt=prompt))
    diff = (got - want).abs().max().item()
    assert diff < 1e-4, diff
    single = model.encode(TEXTS[1:2], prompt=prompt)  # batch invariance
    np.testing.assert_allclose(single[0], got[1].numpy(), atol=1e-5, rtol=0)


def test_ragged_packed_batch_matches_reference(checkpoint):
    """Packed ragged ids (lengths 1 to 16, beyond the sliding window of 4) with per-sequence prompt lengths."""
    folder, mistral, latents = checkpoint
    model = embzoo.load(folder, device="cpu").model
    seqs, skips = ragged_ids([9, 1, 16, 6], 30522), [2, 0, 5, 1]
    with torch.no_grad():
        got = F.normalize(model(PackedBatch.from_sequences(seqs), torch.tensor(skips, dtype=torch.int32)))
    want = torch.cat([bidirectional_reference(mistral, latents, [s], n) for s, n in zip(seqs, skips, strict=True)])
    diff = (got - want).abs().max().item()
    assert diff < 1e-4, diff


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda sd: sd.pop(BLOCK + "1.fn.net.2.bias"), r"missing.*mlp\.down\.bias"),
        (lambda sd: sd.pop(PREFIX + "latents"), r"missing.*'latents'"),
        (lambda sd: sd.update({PREFIX + "extra.weight": torch.zeros(2)}), r"left over.*latent_attention_model\.extra"),
        (lambda sd: sd.update({BLOCK + "0.fn.to_q.bias": torch.zeros(96)}), r"to_q\.bias"),
    ],
)
def test_pooler_loading_is_strict(checkpoint, edit, message):
    folder, _, _ = checkpoint
    sd = load_file(str(folder / "model.safetensors"))
    edit(sd)
    save_file(sd, str(folder / "model.safetensors"))
    with pytest.raises(WeightMismatch, match=message):
        load_pooler(read_snapshot(folder))


def test_embzoo_folder_reloads_bit_exactly(checkpoint, tmp_path):
    from conftest import assert_round_trip

    folder, _, _ = checkpoint  # the latent-attention pooler stays under its own names
    assert_round_trip(folder, tmp_path / "converted", lambda m: m.encode(["hello world", "ok"], prompt="a b: "))


def test_inspect_reads_the_pooler_table_beside_the_backbone(checkpoint):
    folder, _, _ = checkpoint
    sd = load_file(str(folder / "model.safetensors"))
    sd.pop(PREFIX + "latents")
    save_file(sd | {PREFIX + "extra.weight": torch.zeros(2)}, str(folder / "model.safetensors"))
    rows = inspect_checkpoint(folder).rows
    keyed = {r.key: r for r in rows}
    up = keyed[BLOCK + "1.fn.net.0.weight"]
    assert (up.status, up.param, up.note) == ("claimed", "pooler.mlp.up.weight", "chunks reordered (1, 0)")
    assert keyed["embedding_model.layers.1.self_attn.k_proj.weight"].param == "layers.1.attn.qkv.weight"
    extra = keyed[PREFIX + "extra.weight"]  # the backbone drops the pooler's keys; the pooler table has no rule
    assert (extra.status, extra.note) == ("UNCLAIMED", "no rule in the pooler table")
    assert [(r.status, r.param) for r in rows if r.key is None] == [("MISSING", "pooler.latents")]
    assert {r.status for r in rows if r.key not in (None, PREFIX + "extra.weight")} == {"claimed"}

"""Key prefix (ColBERT query expansion): a backbone given PackedBatch.key_lengths against transformers run
with attention_mask 0 at the non-key positions, which still gives an output at every position."""

import pytest
import torch
from conftest import padded, ragged_ids
from transformers import BertConfig, BertModel, ModernBertConfig, ModernBertModel

from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch

# ModernBERT: local_attention 16 (|i - j| <= 8) cuts the 32-token sequence; every query still has a key in
# its window (k > n - 9), so no row is keyless (embzoo makes such rows 0, transformers' eager mask does not)
LENGTHS = [9, 32, 1, 20, 12, 32]
KEYS = [4, 26, 1, 20, 5, 24]
MODELS = {
    "bert": (BertModel, BertConfig(vocab_size=200, hidden_size=48, num_hidden_layers=2, num_attention_heads=4)),
    "modernbert": (
        ModernBertModel,
        ModernBertConfig(
            initializer_range=0.2,
            vocab_size=200,
            hidden_size=48,
            intermediate_size=40,
            num_hidden_layers=3,
            num_attention_heads=4,
            local_attention=16,
            global_attn_every_n_layers=2,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
            cls_token_id=1,
            sep_token_id=2,
        ),
    ),
}


def masked_reference(model, seqs, key_lengths, pad_id) -> list[torch.Tensor]:
    """transformers on the right-padded batch with attention_mask 1 only on each sequence's key prefix."""
    ids, _ = padded(seqs, pad_id)
    mask = (torch.arange(ids.shape[1]) < torch.tensor(key_lengths)[:, None]).long()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


@pytest.mark.parametrize("name, backend", [("bert", "sdpa"), ("modernbert", "sdpa"), ("modernbert", "flex")])
def test_key_prefix_matches_transformers_attention_mask(make_checkpoint, name, backend):
    model_cls, config = MODELS[name]
    folder, ref = make_checkpoint(model_cls, config, noise=0.2)
    ours, _ = load_backbone(read_snapshot(folder), attn_backend=backend)
    seqs = ragged_ids(LENGTHS, config.vocab_size)
    with torch.no_grad():
        got = ours(PackedBatch.from_sequences(seqs, key_lengths=KEYS)).split(LENGTHS)
        unmasked = ours(PackedBatch.from_sequences(seqs)).split(LENGTHS)
        truncated = ours(PackedBatch.from_sequences([s[:n] for s, n in zip(seqs, KEYS, strict=True)])).split(KEYS)
    expected = masked_reference(ref, seqs, KEYS, config.pad_token_id)
    for g, e, u, t, n in zip(got, expected, unmasked, truncated, KEYS, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)  # every position, the expansion tokens included
        torch.testing.assert_close(g[:n], t, atol=1e-5, rtol=0)  # the key prefix is the truncated text alone
        assert (n == len(g)) == torch.allclose(g, u, atol=1e-3)  # the prefix matters wherever it is shorter


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["flash", "varlen", "flex"])
def test_cuda_key_prefix_backbone_matches_sdpa(make_checkpoint, backend):
    """BERT (no causal/window/ALiBi: every backend can) in bf16 on CUDA, each backend against sdpa."""
    from embzoo.modeling.attention import available_backends

    if backend not in available_backends("cuda", torch.bfloat16, {"key_prefix"}):
        pytest.skip(f"{backend} cannot run here: flash-attn is not installed, or torch lacks varlen_attn")
    model_cls, config = MODELS["bert"]
    folder, _ = make_checkpoint(model_cls, config, noise=0.2)
    batch = PackedBatch.from_sequences(ragged_ids(LENGTHS, config.vocab_size), key_lengths=KEYS).to("cuda")
    outs = {}
    for name in (backend, "sdpa"):
        ours, _ = load_backbone(read_snapshot(folder), attn_backend=name, dtype=torch.bfloat16, device="cuda")
        with torch.no_grad():
            outs[name] = ours(batch).float()
    torch.testing.assert_close(outs[backend], outs["sdpa"], atol=5e-2, rtol=5e-2)

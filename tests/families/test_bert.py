"""BERT / RoBERTa / XLM-R: config translation, and parity against transformers' own classes."""

import pytest
import torch
from conftest import padded, ragged_ids, reference_hidden
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertModel,
    RobertaConfig,
    RobertaModel,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import bert
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch


def test_to_arch_bert_and_roberta_offsets():
    base = {"vocab_size": 99, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
    base["intermediate_size"] = 64
    b = bert.to_arch({**base, "model_type": "bert", "max_position_embeddings": 128})
    assert (b.position_offset, b.position_pad_id, b.max_positions, b.head_dim) == (0, None, 128, 8)
    r = bert.to_arch({**base, "model_type": "xlm-roberta", "pad_token_id": 1, "hidden_act": "gelu_new"})
    assert (r.position_offset, r.position_pad_id, r.activation) == (2, 1, "gelu_tanh")


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"position_embedding_type": "relative_key"}, "only 'absolute'"),
        ({"hidden_act": "mish"}, "supported"),
    ],
)
def test_to_arch_rejects_unsupported_variants(changes, message):
    hf = {"model_type": "bert", "vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 1}
    hf |= {"num_attention_heads": 2, "intermediate_size": 16, **changes}
    with pytest.raises(UnsupportedConfig, match=message):
        bert.to_arch(hf)


SMALL = dict(vocab_size=300, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
CONFIGS = [
    pytest.param(BertModel, BertConfig(**SMALL), id="bert-gelu"),
    pytest.param(BertModel, BertConfig(**SMALL | dict(hidden_act="gelu_new", type_vocab_size=1)), id="bert-tanh"),
    pytest.param(BertModel, BertConfig(**SMALL | dict(hidden_size=36, num_attention_heads=3)), id="bert-3heads"),
    pytest.param(BertModel, BertConfig(**SMALL | dict(hidden_act="relu", num_hidden_layers=3)), id="bert-relu"),
    pytest.param(RobertaModel, RobertaConfig(**SMALL | dict(max_position_embeddings=80)), id="roberta"),
    pytest.param(
        XLMRobertaModel,
        XLMRobertaConfig(**SMALL | dict(max_position_embeddings=70, type_vocab_size=1, layer_norm_eps=1e-5)),
        id="xlm-roberta",
    ),
]


@pytest.mark.parametrize("model_cls, config", CONFIGS)
def test_backbone_matches_transformers(make_checkpoint, model_cls, config):
    folder, ref = make_checkpoint(model_cls, config)
    ours, head = load_backbone(read_snapshot(folder))
    assert head is None
    lengths = [1, 64, 7, 2, 33, 1, 17, 64, 5]
    seqs = ragged_ids(lengths, config.vocab_size)
    # literal pad tokens inside texts: RoBERTa/XLM-R give them position padding_idx and do not count them
    for i, j in ((1, 3), (1, 40), (4, 0), (5, 0), (8, 4)):
        seqs[i][j] = config.pad_token_id
    expected = reference_hidden(ref, seqs, config.pad_token_id)
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        got = ours(batch).split(lengths)
    for g, e in zip(got, expected, strict=True):
        torch.testing.assert_close(g, e, atol=1e-4, rtol=0)
    mean_ours = torch.stack([g.mean(0) for g in got])
    torch.testing.assert_close(mean_ours, torch.stack([e.mean(0) for e in expected]), atol=1e-4, rtol=0)


def test_token_type_ids_match_transformers(make_checkpoint):
    config = BertConfig(**SMALL)
    folder, ref = make_checkpoint(BertModel, config)
    ours, _ = load_backbone(read_snapshot(folder))
    seqs = ragged_ids([6, 9], config.vocab_size)
    types = [[0, 0, 0, 1, 1, 1], [0] * 4 + [1] * 5]
    with torch.no_grad():
        got = ours(PackedBatch.from_sequences(seqs, types))
        want = torch.cat(
            [
                ref(input_ids=torch.tensor([s]), token_type_ids=torch.tensor([t]))[0][0]
                for s, t in zip(seqs, types, strict=True)
            ]
        )
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "model_cls, config",
    [
        pytest.param(BertForSequenceClassification, BertConfig(**SMALL, num_labels=1), id="bert-1label"),
        pytest.param(
            XLMRobertaForSequenceClassification,
            XLMRobertaConfig(**SMALL, num_labels=3, max_position_embeddings=80),
            id="xlm-roberta-3labels",
        ),
    ],
)
def test_classification_head_matches_transformers(make_checkpoint, model_cls, config):
    folder, ref = make_checkpoint(model_cls, config)
    backbone, head = load_backbone(read_snapshot(folder))
    assert head is not None
    lengths = [3, 12, 1, 30]
    seqs = ragged_ids(lengths, config.vocab_size, seed=1)
    ids, mask = padded(seqs, config.pad_token_id)
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask).logits
        got = head(backbone(batch)[batch.cu_seqlens[:-1].long()])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_classifier_loaded_as_embedder_drops_the_head(make_checkpoint):
    folder, _ = make_checkpoint(BertForSequenceClassification, BertConfig(**SMALL))
    backbone, head = load_backbone(read_snapshot(folder), with_head=False)
    assert head is None and len(backbone.layers) == SMALL["num_hidden_layers"]

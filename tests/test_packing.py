"""Token-budget batching and PackedBatch construction."""

import numpy as np
import pytest
import torch
from conftest import mlp_rows

from embzoo.config import ArchConfig
from embzoo.kernels.pooling import segment_pool_ref
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch, TokenRows
from embzoo.packing import counting_tokens, token_budget_batches


@pytest.mark.parametrize("sort", [True, False])
def test_batches_respect_the_budget_and_cover_every_index_once(sort):
    lengths = np.random.default_rng(0).integers(1, 300, size=500)
    batches = token_budget_batches(lengths, 1024, sort=sort)
    assert sorted(np.concatenate(batches).tolist()) == list(range(500))
    assert all(lengths[b].sum() <= 1024 for b in batches)
    if sort:
        flat = lengths[np.concatenate(batches)]
        assert (np.diff(flat) <= 0).all()
    else:
        assert np.concatenate(batches).tolist() == list(range(500))


def test_a_sequence_longer_than_the_budget_gets_its_own_batch():
    assert [b.tolist() for b in token_budget_batches([5, 50, 5], 16)] == [[1], [0, 2]]
    assert token_budget_batches([], 16) == []
    with pytest.raises(ValueError, match="positive"):
        token_budget_batches([1], 0)


def test_packed_batch_layout():
    batch = PackedBatch.from_sequences([[7, 8, 9], [4], [5, 6]], [[0, 0, 1], [0], [1, 1]])
    assert batch.input_ids.tolist() == [7, 8, 9, 4, 5, 6]
    assert batch.positions.tolist() == [0, 1, 2, 0, 0, 1]
    assert batch.cu_seqlens.tolist() == [0, 3, 4, 6] and batch.cu_seqlens.dtype == torch.int32
    assert batch.max_seqlen == 3 and batch.num_sequences == 3
    assert batch.token_type_ids.tolist() == [0, 0, 1, 0, 1, 1]
    with pytest.raises(ValueError, match="at least one token"):
        PackedBatch.from_sequences([[1], []])


def test_packed_batch_key_lengths():
    seqs = [[7, 8, 9], [4], [5, 6]]
    assert PackedBatch.from_sequences(seqs).key_lengths is None
    batch = PackedBatch.from_sequences(seqs, key_lengths=[2, 1, 2])
    assert batch.key_lengths.tolist() == [2, 1, 2] and batch.key_lengths.dtype == torch.int32
    moved = batch.to("meta")
    assert moved.key_lengths.device.type == "meta" and moved.cu_seqlens.device.type == "meta"
    for bad, message in [([0, 1, 2], r"key_lengths\[0\] = 0 is outside 1..3"), ([3, 2, 1], r"key_lengths\[1\] = 2")]:
        with pytest.raises(ValueError, match=message):
            PackedBatch.from_sequences(seqs, key_lengths=bad)
    with pytest.raises(ValueError, match=r"one entry per sequence \(3\); got 2"):
        PackedBatch.from_sequences(seqs, key_lengths=[1, 1])


@pytest.mark.parametrize("skip", [None, [0, 2, 5, 1]], ids=["no-skip", "skip"])
def test_token_rows_at_the_ends_are_the_pooled_tokens(skip):
    """TokenRows.ends picks the rows segment_pool reads for "first" / "last" (a skip past the end: the first token)."""
    cu = torch.tensor([0, 3, 7, 9, 10], dtype=torch.int32)
    h = torch.randn(10, 4)
    skip_t = None if skip is None else torch.tensor(skip, dtype=torch.int32)
    rows = TokenRows.ends(cu, ["last", "first"], skip_t)
    assert rows.per_sequence == 2
    want = torch.stack([segment_pool_ref(h, cu, mode, skip_t) for mode in ("last", "first")], dim=1)
    torch.testing.assert_close(h[rows.index].view(4, 2, 4), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="'first' or 'last'"):
        TokenRows.ends(cu, ["mean"])


def test_from_padded_takes_left_padding():
    ids = torch.tensor([[0, 0, 7, 8], [4, 5, 6, 9]])
    mask = (ids != 0).long()
    types = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1]])
    batch = PackedBatch.from_padded(ids, mask, types)
    want = PackedBatch.from_sequences([[7, 8], [4, 5, 6, 9]], [[1, 1], [0, 0, 1, 1]])
    for field in ("input_ids", "positions", "cu_seqlens", "token_type_ids"):
        assert torch.equal(getattr(batch, field), getattr(want, field)), field
    assert batch.max_seqlen == 4


def tiny_backbone() -> Backbone:
    torch.manual_seed(0)
    cfg = ArchConfig(vocab_size=60, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=64)
    return Backbone(cfg).eval()


def test_token_rows_of_empty_sequences_pool_to_zeros():
    """A padded batch may hold empty sequences (all-zero mask rows): their rows come back as zeros (segment_pool's
    empty pool) and the other sequences' rows keep their states; no sequences, or only empty ones, work too."""
    backbone = tiny_backbone()
    lengths = torch.tensor([3, 0, 6, 4, 0])
    ids = torch.randint(5, 60, (5, 6), generator=torch.Generator().manual_seed(1))
    batch = PackedBatch.from_padded(ids, (torch.arange(6) < lengths[:, None]).long())
    with torch.no_grad():
        full = backbone(batch)
        for modes in (["first"], ["last"], ["first", "last"]):
            got = backbone(batch, TokenRows.ends(batch.cu_seqlens, modes)).view(5, len(modes), -1)
            want = torch.stack([segment_pool_ref(full, batch.cu_seqlens, mode) for mode in modes], dim=1)
            torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        for batch in (PackedBatch.from_sequences([]), PackedBatch.from_padded(ids[:2], torch.zeros(2, 6))):
            rows = TokenRows.ends(batch.cu_seqlens, ["first", "last"])
            assert torch.equal(backbone(batch, rows), torch.zeros(2 * batch.num_sequences, 16))
            assert backbone(batch).shape == (0, 16)  # every token: none


def test_token_rows_fall_back_to_the_full_last_layer_when_padding_would_dominate():
    """Row attention pads keys and values to [B, S]: one long sequence among many one-token ones would pad far past
    the batch's tokens (memory), so the last layer then computes every token and the rows are taken after it."""
    backbone = tiny_backbone()
    seqs = [list(range(5, 45))] + [[7]] * 20
    batch = PackedBatch.from_sequences(seqs)  # 60 tokens; padded: 21 × 40 = 840
    rows = TokenRows.ends(batch.cu_seqlens, ["first"])
    with mlp_rows(backbone) as seen, torch.no_grad():
        got = backbone(batch, rows)
        want = backbone(batch)[rows.index]
    assert seen["last"] == [60, 60]
    torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    even = PackedBatch.from_sequences(seqs[:1] + [list(range(5, 25))] * 2)  # 80 tokens; padded: 3 × 40 = 120
    with mlp_rows(backbone) as seen, torch.no_grad():
        backbone(even, TokenRows.ends(even.cu_seqlens, ["first"]))
    assert seen["last"] == [3]  # the rows alone


def test_counting_tokens_counts_the_packed_tokens_inside_its_block_only():
    token_budget_batches([3, 4], 8)
    with counting_tokens() as count:
        token_budget_batches([3, 4], 8)
        token_budget_batches([5], 2)
    token_budget_batches([100], 8)
    assert count.tokens == 12

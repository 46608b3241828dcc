"""unpad (Triton vs reference vs a python-loop oracle), cu_seqlens_of, padding_offsets and shift_rows."""

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels.unpad import unpad_ref

LENGTHS = [[3, 1, 5], [1], [6], [1, 1, 1], [], [2, 0, 4]]
FEATURES = [(), (7,), (48,), (100,), (3, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)


def padded_batch(lengths: list[int], features: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Random [B, S, *F] with S = max length + 2; padding positions hold a sentinel (1e4)."""
    seq = max(lengths, default=0) + 2
    x = torch.randn(len(lengths), seq, *features).to(dtype)
    for b, length in enumerate(lengths):
        x[b, length:] = 1e4
    return x


def oracle_unpad(x: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    rows = [x[b, t] for b, length in enumerate(lengths) for t in range(length)]
    return torch.stack(rows) if rows else x.new_empty((0, *x.shape[2:]))


def check_unpad(lengths: list[int], features: tuple[int, ...], dtype: torch.dtype) -> None:
    x = padded_batch(lengths, features, dtype)
    cu = cu_seqlens_of(lengths)
    expected = oracle_unpad(x, lengths)
    with K.use("triton"):
        got_triton = K.unpad(x, cu)
    with K.use("reference"):
        got_ref = K.unpad(x, cu)
    for got in (got_triton, got_ref):
        assert got.dtype == dtype
        assert got.shape == (sum(lengths), *features)
        torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=0)


@pytest.mark.parametrize("features", FEATURES, ids=str)
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_unpad_shapes(lengths: list[int], features: tuple[int, ...]) -> None:
    check_unpad(lengths, features, torch.float32)


@pytest.mark.parametrize("features", [(7,), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unpad_dtypes(dtype: torch.dtype, features: tuple[int, ...]) -> None:
    check_unpad([3, 1, 5], features, dtype)


def test_unpad_integer_ids() -> None:
    ids = torch.arange(24, dtype=torch.int64).reshape(3, 8)
    cu = cu_seqlens_of([8, 2, 5])
    with K.use("triton"):
        got = K.unpad(ids, cu)
    assert torch.equal(got, oracle_unpad(ids, [8, 2, 5]))


def test_unpad_wrong_cu_seqlens_size() -> None:
    with pytest.raises(ValueError, match="cu_seqlens"):
        unpad_ref(torch.zeros(2, 3, 4), cu_seqlens_of([1, 2, 3]))


def test_cu_seqlens_of_lengths() -> None:
    cu, max_seqlen = K.cu_seqlens_of(torch.tensor([3, 1, 5, 0]))
    assert cu.dtype == torch.int32
    assert cu.tolist() == [0, 3, 4, 9, 9]
    assert max_seqlen == 5


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.int64, torch.int32], ids=str)
def test_padding_offsets_of_a_right_padded_mask_are_zero(mask_dtype: torch.dtype) -> None:
    mask = torch.tensor([[1] * n + [0] * (6 - n) for n in [3, 1, 5, 0]]).to(mask_dtype)
    assert K.padding_offsets(mask).tolist() == [0, 0, 0, 0]


def test_empty_batch() -> None:
    cu, max_seqlen = K.cu_seqlens_of(torch.zeros(0, dtype=torch.int64))
    assert cu.tolist() == [0]
    assert cu.dtype == torch.int32
    assert max_seqlen == 0
    assert K.padding_offsets(torch.zeros(0, 4, dtype=torch.int64)).numel() == 0


def test_padding_offsets_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match="2-D"):
        K.padding_offsets(torch.ones(2, 3, 4))


def test_padding_offsets_and_shift_rows_turn_left_padding_into_right_padding() -> None:
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0]])
    starts = K.padding_offsets(mask)
    assert starts.tolist() == [2, 0, 0, 0, 1]
    x = torch.arange(20).view(5, 4) * mask
    right = K.shift_rows(x, starts)
    assert right.tolist() == [[2, 3, 0, 0], [4, 5, 6, 7], [0, 0, 0, 0], [12, 13, 0, 0], [17, 18, 0, 0]]
    assert torch.equal(K.shift_rows(right, -starts), x)
    features = torch.randn(5, 4, 3) * mask[..., None]
    assert torch.equal(K.shift_rows(K.shift_rows(features, starts), -starts), features)


@pytest.mark.parametrize("mask", [[[1, 0, 1]], [[0, 1, 0, 1]]], ids=["hole", "two-runs"])
def test_padding_offsets_rejects_tokens_in_more_than_one_run(mask: list[list[int]]) -> None:
    with pytest.raises(ValueError, match=r"padded on the right or on the left; rows \[0\] are not"):
        K.padding_offsets(torch.tensor(mask))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_unpad_cuda_matches_reference(dtype: torch.dtype) -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: compiled kernel vs reference on a large ragged batch."""
    lengths = torch.randint(1, 700, (37,)).tolist()
    x = padded_batch(lengths, (12, 64), dtype).cuda()
    cu = cu_seqlens_of(lengths).cuda()
    assert torch.equal(K.unpad(x, cu), unpad_ref(x, cu))

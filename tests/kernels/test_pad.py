"""pad (Triton vs reference vs a python-loop oracle), and the unpad/pad round trip."""

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels.pad import pad_ref

LENGTHS = [[3, 1, 5], [1], [6], [1, 1, 1], [], [2, 0, 4], [0, 0]]
FEATURES = [(), (7,), (48,), (100,), (3, 5)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)


def oracle_pad(x: torch.Tensor, lengths: list[int], max_seqlen: int) -> torch.Tensor:
    out = torch.zeros((len(lengths), max_seqlen, *x.shape[1:]), dtype=x.dtype)
    start = 0
    for b, length in enumerate(lengths):
        for t in range(length):
            out[b, t] = x[start + t]
        start += length
    return out


def check_pad(lengths: list[int], features: tuple[int, ...], dtype: torch.dtype, extra: int) -> None:
    x = torch.randn(sum(lengths), *features).to(dtype)
    cu = cu_seqlens_of(lengths)
    max_seqlen = max(lengths, default=0) + extra
    expected = oracle_pad(x, lengths, max_seqlen)
    with K.use("triton"):
        got_triton = K.pad(x, cu, max_seqlen)
    with K.use("reference"):
        got_ref = K.pad(x, cu, max_seqlen)
    for got in (got_triton, got_ref):
        assert got.dtype == dtype
        assert got.shape == (len(lengths), max_seqlen, *features)
        torch.testing.assert_close(got.float(), expected.float(), rtol=0, atol=0)


@pytest.mark.parametrize("features", FEATURES, ids=str)
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_pad_shapes(lengths: list[int], features: tuple[int, ...]) -> None:
    check_pad(lengths, features, torch.float32, extra=2)


@pytest.mark.parametrize("extra", [0, 3], ids=["tight", "extra-padding"])
@pytest.mark.parametrize("features", [(7,), (3, 5)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pad_dtypes(dtype: torch.dtype, features: tuple[int, ...], extra: int) -> None:
    check_pad([3, 1, 5], features, dtype, extra)


def test_pad_overwrites_reused_memory() -> None:
    """The Triton output comes from torch.empty; padding must be written as zeros, not left over."""
    lengths = [2, 5, 1]
    x = torch.randn(sum(lengths), 33)
    cu = cu_seqlens_of(lengths)
    for _ in range(3):
        junk = torch.full((3, 7, 33), float("nan"))
        del junk
        with K.use("triton"):
            got = K.pad(x, cu, 7)
        torch.testing.assert_close(got, oracle_pad(x, lengths, 7), rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_unpad_pad_round_trip(impl: str) -> None:
    lengths = [4, 1, 7, 2]
    mask = torch.tensor([[1] * n + [0] * (7 - n) for n in lengths])
    x = torch.randn(4, 7, 2, 3) * mask[:, :, None, None]
    cu, max_seqlen = K.cu_seqlens_of(mask.sum(dim=1))
    with K.use(impl):
        packed = K.unpad(x, cu)
        assert packed.shape == (sum(lengths), 2, 3)
        torch.testing.assert_close(K.pad(packed, cu, max_seqlen), x, rtol=0, atol=0)


def test_pad_rejects_bad_cu_seqlens() -> None:
    with pytest.raises(ValueError, match="cu_seqlens"):
        pad_ref(torch.zeros(3, 4), torch.tensor([[0, 3]], dtype=torch.int32), 3)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pad_cuda_matches_reference(dtype: torch.dtype) -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: compiled kernel vs reference on a large ragged batch."""
    lengths = torch.randint(0, 700, (37,)).tolist()
    cu = cu_seqlens_of(lengths).cuda()
    x = torch.randn(sum(lengths), 12, 64, device="cuda").to(dtype)
    max_seqlen = max(lengths) + 5
    assert torch.equal(K.pad(x, cu, max_seqlen), pad_ref(x, cu, max_seqlen))

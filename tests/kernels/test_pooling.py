"""segment_pool (Triton vs reference vs a python-loop oracle) over ragged batches, dtypes and skips."""

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels.pooling import POOLING_MODES, segment_pool_ref

LENGTHS = [[3, 1, 5], [1], [6], [], [2, 0, 4], [17, 40, 1]]
DIMS = [7, 100, 130]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SKIPS = ["none", "zero", "partial", "all"]


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)


def skip_of(kind: str, lengths: list[int]) -> list[int] | None:
    if kind == "none":
        return None
    if kind == "zero":
        return [0] * len(lengths)
    if kind == "partial":
        return [n // 2 for n in lengths]
    return [n + b % 2 for b, n in enumerate(lengths)]


def oracle_pool(x: torch.Tensor, lengths: list[int], mode: str, skip: list[int] | None) -> torch.Tensor:
    """Token-by-token loop in float64, written from the documented semantics."""
    x = x.double()
    out = torch.zeros(len(lengths), x.shape[1], dtype=torch.float64)
    start = 0
    for b, length in enumerate(lengths):
        s = 0 if skip is None else skip[b]
        if mode == "first" and length > 0:
            out[b] = x[start + s] if s < length else x[start]
        elif mode == "last" and length > 0:
            out[b] = x[start + length - 1]
        elif mode in ("mean", "max", "weighted_mean"):
            total = torch.zeros(x.shape[1], dtype=torch.float64)
            weight_sum = 0.0
            for t in range(s, length):
                if mode == "max":
                    total = x[start + t] if weight_sum == 0 else torch.maximum(total, x[start + t])
                    weight_sum = 1.0
                else:
                    weight = t + 1.0 if mode == "weighted_mean" else 1.0
                    total = total + weight * x[start + t]
                    weight_sum += weight
            if weight_sum > 0:
                out[b] = total if mode == "max" else total / weight_sum
        start += length
    return out


def check_pool(lengths: list[int], dim: int, dtype: torch.dtype, mode: str, skip: list[int] | None) -> None:
    x = torch.randn(sum(lengths), dim).to(dtype)
    cu = cu_seqlens_of(lengths)
    skip_t = None if skip is None else torch.tensor(skip, dtype=torch.int32)
    expected = oracle_pool(x, lengths, mode, skip).float()
    with K.use("triton"):
        got_triton = K.segment_pool(x, cu, mode, skip_t)
    with K.use("reference"):
        got_ref = K.segment_pool(x, cu, mode, skip_t)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    for got in (got_triton, got_ref):
        assert got.dtype == torch.float32
        assert got.shape == (len(lengths), dim)
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_pool_shapes(lengths: list[int], dim: int, mode: str) -> None:
    check_pool(lengths, dim, torch.float32, mode, skip_of("partial", lengths))


@pytest.mark.parametrize("skip_kind", SKIPS)
@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_dtypes_and_skips(dtype: torch.dtype, mode: str, skip_kind: str) -> None:
    lengths = [3, 1, 5, 20]
    check_pool(lengths, 48, dtype, mode, skip_of(skip_kind, lengths))


@pytest.mark.parametrize("mode", POOLING_MODES)
def test_pool_strided_rows(mode: str) -> None:
    """Rows of x may be strided (a column slice of a wider tensor)."""
    lengths = [4, 2, 9]
    wide = torch.randn(sum(lengths), 80)
    x = wide[:, 10:60]
    cu = cu_seqlens_of(lengths)
    with K.use("triton"):
        got = K.segment_pool(x, cu, mode)
    torch.testing.assert_close(got, oracle_pool(x, lengths, mode, None).float(), rtol=1e-5, atol=1e-5)


def test_pool_weighted_mean_counts_skipped_positions() -> None:
    x = torch.tensor([[100.0], [1.0], [3.0]])
    cu = cu_seqlens_of([3])
    skip = torch.tensor([1], dtype=torch.int32)
    with K.use("triton"):
        got = K.segment_pool(x, cu, "weighted_mean", skip)
    torch.testing.assert_close(got, torch.tensor([[(2 * 1.0 + 3 * 3.0) / 5]]))


@pytest.mark.parametrize("impl", ["triton", "reference"])
def test_pool_rejects_bad_arguments(impl: str) -> None:
    x, cu = torch.zeros(4, 8), cu_seqlens_of([1, 3])
    with K.use(impl), pytest.raises(ValueError, match="pooling mode"):
        K.segment_pool(x, cu, "cls")
    with K.use(impl), pytest.raises(ValueError, match="skip"):
        K.segment_pool(x, cu, "mean", torch.zeros(3, dtype=torch.int32))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_pool_cuda_matches_reference(dtype: torch.dtype, mode: str) -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: compiled kernel vs reference on a large ragged batch."""
    lengths = torch.randint(1, 700, (37,)).tolist()
    cu = cu_seqlens_of(lengths).cuda()
    skip = torch.tensor(skip_of("partial", lengths), dtype=torch.int32, device="cuda")
    x = torch.randn(sum(lengths), 1000, device="cuda").to(dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(
        K.segment_pool(x, cu, mode, skip), segment_pool_ref(x, cu, mode, skip), rtol=tol, atol=tol
    )

"""maxsim (Triton vs reference vs a python-loop oracle) over ragged queries/docs, dims, dtypes, reduces and pairs."""

import time

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels.maxsim import MAXSIM_REDUCES, maxsim_ref

# (query lengths, doc lengths): length 1, empty queries/docs, empty batches, > one 16-token block (interpreter tiles)
LENGTHS = [
    ([3, 1, 5], [4, 2, 7]),
    ([1], [1]),
    ([0, 2], [3, 0, 1]),
    ([0], [0]),
    ([2, 3], []),
    ([], [2, 3]),
    ([17, 1], [20, 33]),
]
DIMS = [7, 130]  # one partial 64-wide K block (interpreter tile); three blocks, the last partial
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["triton", "reference"]


def cu_seqlens_of(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0, *torch.tensor(lengths, dtype=torch.int64).cumsum(0).tolist()], dtype=torch.int32)


def vectors(lengths: list[int], dim: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Random token vectors scaled so that dot products are about N(0, 1)."""
    return (torch.randn(sum(lengths), dim) / dim**0.5).to(dtype)


def all_pairs(n_queries: int, n_docs: int) -> torch.Tensor:
    return torch.cartesian_prod(torch.arange(n_queries), torch.arange(n_docs)).reshape(-1, 2)


def oracle_maxsim(
    queries: torch.Tensor,
    q_lengths: list[int],
    docs: torch.Tensor,
    d_lengths: list[int],
    pairs: list[tuple[int, int]],
    reduce: str,
) -> torch.Tensor:
    """Score by score in float64 from the definition: REDUCE over query tokens of the max dot over doc tokens."""
    q, d = queries.double(), docs.double()
    q_start = [sum(q_lengths[:i]) for i in range(len(q_lengths))]
    d_start = [sum(d_lengths[:j]) for j in range(len(d_lengths))]
    scores = []
    for i, j in pairs:
        total = 0.0
        for t in range(q_lengths[i]):
            dots = [float(q[q_start[i] + t] @ d[d_start[j] + u]) for u in range(d_lengths[j])]
            total += max(dots, default=0.0)
        if reduce == "mean" and q_lengths[i] > 0:
            total /= q_lengths[i]
        scores.append(total)
    return torch.tensor(scores, dtype=torch.float64)


def both(*args: object, **kwargs: object) -> list[torch.Tensor]:
    """K.maxsim under the Triton (interpreter) and the reference implementations."""
    results = []
    for impl in IMPLS:
        with K.use(impl):
            results.append(K.maxsim(*args, **kwargs))
    return results


def check_maxsim(q_lengths: list[int], d_lengths: list[int], dim: int, dtype: torch.dtype, reduce: str) -> None:
    """Full matrix and a pairs list (every other pair in reverse order, then a repeat) against the oracle."""
    queries, docs = vectors(q_lengths, dim, dtype), vectors(d_lengths, dim, dtype)
    cu_q, cu_d = cu_seqlens_of(q_lengths), cu_seqlens_of(d_lengths)
    grid = all_pairs(len(q_lengths), len(d_lengths))
    pairs = torch.cat([grid.flip(0)[::2], grid[:1]])
    expected_grid = oracle_maxsim(queries, q_lengths, docs, d_lengths, grid.tolist(), reduce).float()
    expected_pairs = oracle_maxsim(queries, q_lengths, docs, d_lengths, pairs.tolist(), reduce).float()
    for got in both(queries, cu_q, docs, cu_d, reduce=reduce):
        assert got.dtype == torch.float32 and got.shape == (len(q_lengths), len(d_lengths))
        torch.testing.assert_close(got.flatten(), expected_grid, rtol=0, atol=1e-4)
    for got in both(queries, cu_q, docs, cu_d, pairs, reduce=reduce):
        assert got.dtype == torch.float32 and got.shape == (pairs.shape[0],)
        torch.testing.assert_close(got, expected_pairs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("reduce", MAXSIM_REDUCES)
@pytest.mark.parametrize("dim", DIMS)
@pytest.mark.parametrize("lengths", LENGTHS, ids=str)
def test_maxsim_shapes(lengths: tuple[list[int], list[int]], dim: int, reduce: str) -> None:
    check_maxsim(*lengths, dim, torch.float32, reduce)


@pytest.mark.parametrize("reduce", MAXSIM_REDUCES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maxsim_dtypes(dtype: torch.dtype, reduce: str) -> None:
    """fp16/bf16 inputs: products of the stored values, accumulated in fp32 (the oracle reads the same values)."""
    check_maxsim([3, 1, 18], [5, 17, 2], 40, dtype, reduce)


def test_maxsim_empty_query_and_doc_score_zero() -> None:
    queries, docs = vectors([0, 2], 8), vectors([3, 0], 8)
    cu_q, cu_d = cu_seqlens_of([0, 2]), cu_seqlens_of([3, 0])
    for reduce in MAXSIM_REDUCES:
        for got in both(queries, cu_q, docs, cu_d, reduce=reduce):
            assert torch.isfinite(got).all()
            assert (got[0] == 0).all() and (got[:, 1] == 0).all() and got[1, 0] != 0


def test_maxsim_sum_and_mean_by_hand() -> None:
    """Two query tokens against a doc of two tokens: best dots 2 and 3 -> sum 5, mean 2.5."""
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    docs = torch.tensor([[2.0, -1.0], [-4.0, 3.0]])
    cu = cu_seqlens_of([2])
    for reduce, expected in (("sum", 5.0), ("mean", 2.5)):
        for got in both(queries, cu, docs, cu, reduce=reduce):
            torch.testing.assert_close(got, torch.tensor([[expected]]))


@pytest.mark.parametrize("impl", IMPLS)
def test_maxsim_strided_inputs(impl: str) -> None:
    """Rows may be strided (a column slice of a wider tensor) and columns too (a transposed tensor)."""
    q_lengths, d_lengths, dim = [4, 2], [3, 5, 1], 24
    queries = torch.randn(sum(q_lengths), 40)[:, 8:32]
    docs = torch.randn(dim, sum(d_lengths)).t()
    pairs = all_pairs(2, 3)
    with K.use(impl):
        got = K.maxsim(queries, cu_seqlens_of(q_lengths), docs, cu_seqlens_of(d_lengths))
    expected = oracle_maxsim(queries, q_lengths, docs, d_lengths, pairs.tolist(), "sum").float()
    torch.testing.assert_close(got.flatten(), expected, rtol=0, atol=1e-4)


def test_maxsim_pairs_accept_any_integer_dtype_and_device() -> None:
    queries, docs = vectors([2, 3], 16), vectors([4, 1], 16)
    cu_q, cu_d = cu_seqlens_of([2, 3]), cu_seqlens_of([4, 1])
    pairs = torch.tensor([[1, 0], [0, 1]], dtype=torch.int32)
    full = maxsim_ref(queries, cu_q, docs, cu_d)
    for got in both(queries, cu_q, docs, cu_d, pairs):
        torch.testing.assert_close(got, full[pairs[:, 0].long(), pairs[:, 1].long()], rtol=0, atol=1e-6)


@pytest.mark.parametrize("impl", IMPLS)
def test_maxsim_rejects_bad_arguments(impl: str) -> None:
    queries, docs = torch.zeros(3, 8), torch.zeros(4, 8)
    cu_q, cu_d = cu_seqlens_of([1, 2]), cu_seqlens_of([4])
    bad = [
        ((queries, cu_q, docs, cu_d), {"reduce": "max"}, "reduce"),
        ((queries[0], cu_q, docs, cu_d), {}, "queries must be 2-D"),
        ((queries, cu_q, docs[None], cu_d), {}, "docs must be 2-D"),
        ((queries, cu_q, docs.half(), cu_d), {}, "dtype"),
        ((queries.double(), cu_q, docs.double(), cu_d), {}, "dtype"),
        ((queries, cu_q, torch.zeros(4, 6), cu_d), {}, "same vector size"),
        ((queries, cu_q[None], docs, cu_d), {}, "cu_seqlens"),
        ((queries, cu_q, docs, cu_d.float()), {}, "cu_seqlens"),
        ((queries, cu_q, docs, cu_d, torch.zeros(2, 3, dtype=torch.int64)), {}, r"\[P, 2\]"),
        ((queries, cu_q, docs, cu_d, torch.zeros(2, 2)), {}, r"\[P, 2\]"),
        ((queries, cu_q, docs, cu_d, torch.tensor([[2, 0]])), {}, r"query indices in \[2, 2\]"),
        ((queries, cu_q, docs, cu_d, torch.tensor([[0, 1]])), {}, r"doc indices in \[1, 1\]"),
        ((queries, cu_q, docs, cu_d, torch.tensor([[0, 0], [-1, 0]])), {}, r"query indices in \[-1, 0\]"),
    ]
    for args, kwargs, match in bad:
        with K.use(impl), pytest.raises(ValueError, match=match):
            K.maxsim(*args, **kwargs)


def test_maxsim_autograd_on_docs_takes_the_reference() -> None:
    """Either input needing a gradient rules out the Triton kernel (no backward)."""
    queries, docs = vectors([2], 8), vectors([3], 8).requires_grad_()
    cu_q, cu_d = cu_seqlens_of([2]), cu_seqlens_of([3])
    with K.use("triton"), pytest.raises(RuntimeError, match="no backward"):
        K.maxsim(queries, cu_q, docs, cu_d)
    K.maxsim(queries, cu_q, docs, cu_d).sum().backward()
    assert docs.grad is not None and docs.grad.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("reduce", MAXSIM_REDUCES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_maxsim_cuda_matches_reference(dtype: torch.dtype, reduce: str) -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: 32 queries x 32 tokens vs 1000 docs of ~180 tokens, d=128."""
    torch.manual_seed(0)
    q_lengths = [32] * 32
    d_lengths = torch.randint(1, 300, (1000,)).tolist()
    queries = torch.nn.functional.normalize(torch.randn(sum(q_lengths), 128, device="cuda"), dim=-1).to(dtype)
    docs = torch.nn.functional.normalize(torch.randn(sum(d_lengths), 128, device="cuda"), dim=-1).to(dtype)
    cu_q, cu_d = cu_seqlens_of(q_lengths).cuda(), cu_seqlens_of(d_lengths).cuda()
    pairs = torch.stack([torch.randint(0, 32, (5000,)), torch.randint(0, 1000, (5000,))], 1).cuda()
    full = K.maxsim(queries, cu_q, docs, cu_d, reduce=reduce)
    expected = maxsim_ref(queries, cu_q, docs, cu_d, reduce=reduce)
    torch.testing.assert_close(full, expected, rtol=1e-5, atol=1e-4)
    got_pairs = K.maxsim(queries, cu_q, docs, cu_d, pairs, reduce=reduce)
    torch.testing.assert_close(got_pairs, expected[pairs[:, 0], pairs[:, 1]], rtol=1e-5, atol=1e-4)
    timings = {}
    for impl in IMPLS:
        with K.use(impl):
            K.maxsim(queries, cu_q, docs, cu_d, reduce=reduce)
            torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(10):
                K.maxsim(queries, cu_q, docs, cu_d, reduce=reduce)
            torch.cuda.synchronize()
            timings[impl] = (time.perf_counter() - start) / 10 * 1e3
    print(f"maxsim {dtype} {reduce}: triton {timings['triton']:.3f} ms, reference {timings['reference']:.3f} ms")

"""MaxSim (late interaction) scores between packed query and document token vectors.

score(i, j) = REDUCE over query i's tokens t of (max over doc j's tokens u of <q_t, d_u>), in fp32;
REDUCE "sum" is ColBERT / PyLate, "mean" (sum / query tokens) is BGE-M3's colbert_score.
An empty document scores 0 against every query; an empty query scores 0 (also for "mean").
"""

import torch
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON, interpreting
from embzoo.kernels.pad import pad_ref
from embzoo.kernels.unpad import check_cu_seqlens

MAXSIM_REDUCES = ("sum", "mean")
MAXSIM_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

if HAS_TRITON:
    import triton
    import triton.language as tl

    def _configs() -> list[triton.Config]:
        if interpreting():
            return [triton.Config({"BLOCK_Q": 16, "BLOCK_D": 16, "BLOCK_K": 64}, num_warps=4)]
        shapes = ((32, 64, 64, 4, 3), (32, 128, 32, 4, 3), (16, 64, 64, 4, 3), (64, 64, 32, 4, 3), (32, 64, 128, 8, 2))
        return [
            triton.Config({"BLOCK_Q": q, "BLOCK_D": d, "BLOCK_K": k}, num_warps=w, num_stages=s)
            for q, d, k, w, s in shapes
        ]

    @triton.autotune(configs=_configs(), key=["DIM", "FULL"])
    @triton.jit
    def _maxsim_kernel(
        q_ptr,
        cu_q_ptr,
        d_ptr,
        cu_d_ptr,
        pairs_ptr,
        out_ptr,
        n_queries,
        n_docs,
        stride_q,
        stride_d,
        DIM,
        FULL: tl.constexpr,
        MEAN: tl.constexpr,
        BLOCK_Q: tl.constexpr,
        BLOCK_D: tl.constexpr,
        BLOCK_K: tl.constexpr,
    ):
        p = tl.program_id(0).to(tl.int64)
        if FULL:
            # Doc-major order: neighbouring programs share a document, so its tiles are reused from L2.
            qi = p % n_queries
            dj = p // n_queries
            out_offset = qi * n_docs + dj
        else:
            qi = tl.load(pairs_ptr + 2 * p)
            dj = tl.load(pairs_ptr + 2 * p + 1)
            out_offset = p
        q_start = tl.load(cu_q_ptr + qi).to(tl.int64)
        q_end = tl.load(cu_q_ptr + qi + 1).to(tl.int64)
        d_start = tl.load(cu_d_ptr + dj).to(tl.int64)
        d_end = tl.load(cu_d_ptr + dj + 1).to(tl.int64)
        total = tl.zeros((), tl.float32)
        for q0 in range(q_start, q_end, BLOCK_Q):
            rows = q0 + tl.arange(0, BLOCK_Q)
            row_ok = rows < q_end
            best = tl.full((BLOCK_Q,), float("-inf"), tl.float32)
            for d0 in range(d_start, d_end, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                col_ok = cols < d_end
                sim = tl.zeros((BLOCK_Q, BLOCK_D), tl.float32)
                for k0 in range(0, DIM, BLOCK_K):
                    ks = k0 + tl.arange(0, BLOCK_K)
                    k_ok = ks < DIM
                    a_src = q_ptr + rows[:, None] * stride_q + ks[None, :]
                    a = tl.load(a_src, mask=row_ok[:, None] & k_ok[None, :], other=0.0).to(tl.float32)
                    b_src = d_ptr + cols[None, :] * stride_d + ks[:, None]
                    b = tl.load(b_src, mask=k_ok[:, None] & col_ok[None, :], other=0.0).to(tl.float32)
                    # fp16/bf16 values are exact in tf32, so tf32 products match an fp32 matmul of them;
                    # fp32 inputs keep full precision (torch's default fp32 matmul).
                    if q_ptr.dtype.element_ty == tl.float32:
                        sim = tl.dot(a, b, sim, input_precision="ieee")
                    else:
                        sim = tl.dot(a, b, sim, input_precision="tf32")
                sim = tl.where(col_ok[None, :], sim, float("-inf"))
                best = tl.maximum(best, tl.max(sim, axis=1))
            total += tl.sum(tl.where(row_ok & (d_end > d_start), best, 0.0))
        if MEAN:
            total = total / tl.maximum(q_end - q_start, 1).to(tl.float32)
        tl.store(out_ptr + out_offset, total)

    @triton_op("embzoo::maxsim", mutates_args=())
    def _maxsim_op(
        queries: torch.Tensor,
        cu_q: torch.Tensor,
        docs: torch.Tensor,
        cu_d: torch.Tensor,
        pairs: torch.Tensor | None,
        mean: bool,
    ) -> torch.Tensor:
        n_queries, n_docs = cu_q.shape[0] - 1, cu_d.shape[0] - 1
        shape = (n_queries, n_docs) if pairs is None else (pairs.shape[0],)
        out = torch.empty(shape, dtype=torch.float32, device=queries.device)
        if out.numel() == 0 or queries.numel() == 0 or docs.numel() == 0:
            return out.zero_()
        if queries.stride(1) != 1:
            queries = queries.contiguous()
        if docs.stride(1) != 1:
            docs = docs.contiguous()
        wrap_triton(_maxsim_kernel)[(out.numel(),)](
            queries,
            cu_q,
            docs,
            cu_d,
            cu_q if pairs is None else pairs,
            out,
            n_queries,
            n_docs,
            queries.stride(0),
            docs.stride(0),
            queries.shape[1],
            FULL=pairs is None,
            MEAN=mean,
        )
        return out


def _check_args(
    queries: torch.Tensor,
    cu_q: torch.Tensor,
    docs: torch.Tensor,
    cu_d: torch.Tensor,
    pairs: torch.Tensor | None,
    reduce: str,
) -> None:
    if reduce not in MAXSIM_REDUCES:
        raise ValueError(f"unknown maxsim reduce {reduce!r}; expected one of {', '.join(MAXSIM_REDUCES)}")
    for name, x in (("queries", queries), ("docs", docs)):
        if x.dim() != 2:
            raise ValueError(f"{name} must be 2-D [tokens, dim], got shape {tuple(x.shape)}")
    if queries.dtype != docs.dtype or queries.dtype not in MAXSIM_DTYPES:
        raise ValueError(
            "queries and docs must share one dtype of float32, float16 or bfloat16, "
            f"got {queries.dtype} and {docs.dtype}"
        )
    if queries.shape[1] != docs.shape[1]:
        raise ValueError(f"queries and docs must have the same vector size, got {queries.shape[1]} and {docs.shape[1]}")
    if queries.device != docs.device:
        raise ValueError(f"queries and docs must be on one device, got {queries.device} and {docs.device}")
    check_cu_seqlens(cu_q)
    check_cu_seqlens(cu_d)
    if pairs is None:
        return
    if pairs.dim() != 2 or pairs.shape[1] != 2 or pairs.is_floating_point() or pairs.is_complex():
        raise ValueError(
            "pairs must be an integer tensor [P, 2] of (query index, doc index), "
            f"got {pairs.dtype} {tuple(pairs.shape)}"
        )
    if pairs.shape[0] == 0:
        return
    (q_lo, d_lo), (q_hi, d_hi) = torch.stack([pairs.amin(0), pairs.amax(0)]).tolist()
    n_queries, n_docs = cu_q.shape[0] - 1, cu_d.shape[0] - 1
    if q_lo < 0 or q_hi >= n_queries or d_lo < 0 or d_hi >= n_docs:
        raise ValueError(
            f"pairs must index queries in [0, {n_queries}) and docs in [0, {n_docs}), "
            f"got query indices in [{q_lo}, {q_hi}] and doc indices in [{d_lo}, {d_hi}]"
        )


def maxsim_ref(
    queries: torch.Tensor,
    cu_q: torch.Tensor,
    docs: torch.Tensor,
    cu_d: torch.Tensor,
    pairs: torch.Tensor | None = None,
    *,
    reduce: str = "sum",
) -> torch.Tensor:
    """Plain-torch MaxSim: queries [Tq, d], docs [Td, d] fp32/fp16/bf16, cu_q/cu_d int32 [N+1]
    -> fp32 [Nq, Nd], or [P] for pairs int64 [P, 2] of (query index, doc index)."""
    _check_args(queries, cu_q, docs, cu_d, pairs, reduce)
    n_queries, n_docs = cu_q.shape[0] - 1, cu_d.shape[0] - 1
    shape = (n_queries, n_docs) if pairs is None else (pairs.shape[0],)
    out = torch.zeros(shape, dtype=torch.float32, device=queries.device)
    if out.numel() == 0 or queries.numel() == 0 or docs.numel() == 0:
        return out
    q_len = (cu_q[1:] - cu_q[:-1]).to(queries.device)
    d_len = (cu_d[1:] - cu_d[:-1]).to(queries.device)
    q = pad_ref(queries, cu_q, int(q_len.max())).float()
    d = pad_ref(docs, cu_d, int(d_len.max())).float()
    q_ok = torch.arange(q.shape[1], device=q.device) < q_len[:, None]
    d_ok = torch.arange(d.shape[1], device=d.device) < d_len[:, None]
    if pairs is None:
        sim = torch.einsum("ilk,jmk->ijlm", q, d)
        q_ok, d_ok = q_ok[:, None], d_ok[None]
    else:
        qi, dj = pairs.to(q.device, torch.int64).unbind(1)
        sim = torch.einsum("plk,pmk->plm", q[qi], d[dj])
        q_ok, d_ok = q_ok[qi], d_ok[dj]
    best = sim.masked_fill(~d_ok[..., None, :], float("-inf")).amax(-1)
    total = torch.where(q_ok & d_ok.any(-1, keepdim=True), best, 0.0).sum(-1)
    if reduce == "mean":
        total = total / q_ok.sum(-1).clamp(min=1)
    return total


def maxsim_triton(
    queries: torch.Tensor,
    cu_q: torch.Tensor,
    docs: torch.Tensor,
    cu_d: torch.Tensor,
    pairs: torch.Tensor | None = None,
    *,
    reduce: str = "sum",
) -> torch.Tensor:
    """Triton MaxSim: queries [Tq, d], docs [Td, d] fp32/fp16/bf16, cu_q/cu_d int32 [N+1]
    -> fp32 [Nq, Nd], or [P] for pairs int64 [P, 2] of (query index, doc index)."""
    _check_args(queries, cu_q, docs, cu_d, pairs, reduce)
    device = queries.device
    pairs = None if pairs is None else pairs.to(device, torch.int64).contiguous()
    return _maxsim_op(queries, cu_q.to(device), docs, cu_d.to(device), pairs, reduce == "mean")

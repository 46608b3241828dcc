"""Per-sequence pooling of packed token states [T, D] into [B, D] (sentence-transformers semantics)."""

import torch
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON, interpreting
from embzoo.kernels.unpad import check_cu_seqlens

POOLING_MODES = ("mean", "first", "last", "max", "weighted_mean")

if HAS_TRITON:
    import triton
    import triton.language as tl

    _FIRST = tl.constexpr(POOLING_MODES.index("first"))
    _LAST = tl.constexpr(POOLING_MODES.index("last"))
    _MAX = tl.constexpr(POOLING_MODES.index("max"))
    _WEIGHTED_MEAN = tl.constexpr(POOLING_MODES.index("weighted_mean"))

    def _configs() -> list[triton.Config]:
        if interpreting():
            return [triton.Config({"BLOCK_T": 16, "BLOCK_D": 128}, num_warps=4)]
        shapes = ((32, 128, 4), (16, 256, 4), (64, 64, 4), (32, 256, 8), (64, 128, 8))
        return [triton.Config({"BLOCK_T": t, "BLOCK_D": d}, num_warps=w) for t, d, w in shapes]

    @triton.autotune(configs=_configs(), key=["D", "MODE", "HAS_SKIP"])
    @triton.jit
    def _segment_pool_kernel(
        x_ptr,
        cu_ptr,
        skip_ptr,
        out_ptr,
        stride_x,
        D,
        MODE: tl.constexpr,
        HAS_SKIP: tl.constexpr,
        BLOCK_T: tl.constexpr,
        BLOCK_D: tl.constexpr,
    ):
        b = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
        col_ok = cols < D
        seq_start = tl.load(cu_ptr + b)
        seq_end = tl.load(cu_ptr + b + 1)
        # Rows [lo, hi) are pooled; "first" and "last" pool a single row (none for an empty sequence).
        lo = seq_start
        if HAS_SKIP:
            lo = tl.minimum(seq_start + tl.maximum(tl.load(skip_ptr + b).to(seq_start.dtype), 0), seq_end)
        hi = seq_end
        if MODE == _FIRST:
            lo = tl.where(lo < seq_end, lo, seq_start)
            hi = tl.minimum(lo + 1, seq_end)
        elif MODE == _LAST:
            lo = tl.maximum(seq_end - 1, seq_start)
        if MODE == _MAX:
            acc = tl.full((BLOCK_T, BLOCK_D), float("-inf"), tl.float32)
        else:
            acc = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
        for t0 in range(lo, hi, BLOCK_T):
            rows = t0 + tl.arange(0, BLOCK_T)
            mask = (rows < hi)[:, None] & col_ok[None, :]
            src = x_ptr + rows.to(tl.int64)[:, None] * stride_x + cols[None, :]
            h = tl.load(src, mask=mask, other=0.0).to(tl.float32)
            if MODE == _MAX:
                acc = tl.maximum(acc, tl.where(mask, h, float("-inf")))
            elif MODE == _WEIGHTED_MEAN:
                acc += h * (rows - seq_start + 1).to(tl.float32)[:, None]
            else:
                acc += h
        if MODE == _MAX:
            result = tl.where(hi > lo, tl.max(acc, axis=0), 0.0)
        elif MODE == _WEIGHTED_MEAN:
            first_w = (lo - seq_start).to(tl.int64)
            last_w = (hi - seq_start).to(tl.int64)
            denom = (last_w * (last_w + 1) - first_w * (first_w + 1)) // 2
            result = tl.sum(acc, axis=0) / tl.maximum(denom, 1).to(tl.float32)
        else:
            result = tl.sum(acc, axis=0) / tl.maximum(hi - lo, 1).to(tl.float32)
        tl.store(out_ptr + b.to(tl.int64) * D + cols, result, mask=col_ok)

    @triton_op("embzoo::segment_pool", mutates_args=())
    def _segment_pool_op(
        x: torch.Tensor, cu_seqlens: torch.Tensor, mode: str, skip: torch.Tensor | None
    ) -> torch.Tensor:
        batch, dim = cu_seqlens.shape[0] - 1, x.shape[1]
        out = torch.empty((batch, dim), dtype=torch.float32, device=x.device)
        if out.numel() == 0 or x.shape[0] == 0:
            return out.zero_()
        if x.stride(1) != 1:
            x = x.contiguous()

        def grid(meta: dict) -> tuple[int, int]:
            return batch, triton.cdiv(dim, meta["BLOCK_D"])

        wrap_triton(_segment_pool_kernel)[grid](
            x,
            cu_seqlens,
            cu_seqlens if skip is None else skip,
            out,
            x.stride(0),
            dim,
            MODE=POOLING_MODES.index(mode),
            HAS_SKIP=skip is not None,
        )
        return out


def _check_args(x: torch.Tensor, cu_seqlens: torch.Tensor, mode: str, skip: torch.Tensor | None) -> None:
    if mode not in POOLING_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; expected one of {', '.join(POOLING_MODES)}")
    if x.dim() != 2:
        raise ValueError(f"x must be 2-D [tokens, dim], got shape {tuple(x.shape)}")
    check_cu_seqlens(cu_seqlens)
    if skip is not None and tuple(skip.shape) != (cu_seqlens.shape[0] - 1,):
        raise ValueError(f"skip must have shape ({cu_seqlens.shape[0] - 1},), got {tuple(skip.shape)}")


def segment_pool_ref(
    x: torch.Tensor, cu_seqlens: torch.Tensor, mode: str, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """Plain-torch pooling: x [T, D] fp32/fp16/bf16, cu_seqlens int32 [B+1], skip int32 [B] -> fp32 [B, D]."""
    _check_args(x, cu_seqlens, mode, skip)
    batch, tokens = cu_seqlens.shape[0] - 1, x.shape[0]
    out = torch.zeros((batch, x.shape[1]), dtype=torch.float32, device=x.device)
    if batch == 0 or tokens == 0:
        return out
    cu = cu_seqlens.to(device=x.device, dtype=torch.int64)
    lengths = cu[1:] - cu[:-1]
    skip = torch.zeros_like(lengths) if skip is None else torch.minimum(skip.to(cu).clamp(min=0), lengths)
    h = x.float()
    if mode in ("first", "last"):
        idx = cu[:-1] + torch.where(skip < lengths, skip, 0) if mode == "first" else cu[1:] - 1
        return torch.where((lengths > 0)[:, None], h[idx.clamp(0, tokens - 1)], out)
    seq_id = torch.repeat_interleave(torch.arange(batch, device=x.device), lengths, output_size=tokens)
    pos = torch.arange(tokens, device=x.device) - cu[seq_id]
    keep = pos >= skip[seq_id]
    seq_id, pos, h = seq_id[keep], pos[keep], h[keep]
    if mode == "max":
        return out.scatter_reduce_(0, seq_id[:, None].expand_as(h), h, "amax", include_self=False)
    if mode == "mean":
        denom = lengths - skip
    else:
        h = h * (pos + 1).to(h.dtype)[:, None]
        denom = (lengths * (lengths + 1) - skip * (skip + 1)) // 2
    return out.index_add_(0, seq_id, h) / denom.clamp(min=1).to(out.dtype)[:, None]


def segment_pool_triton(
    x: torch.Tensor, cu_seqlens: torch.Tensor, mode: str, skip: torch.Tensor | None = None
) -> torch.Tensor:
    """Triton pooling: x [T, D] fp32/fp16/bf16, cu_seqlens int32 [B+1], skip int32 [B] -> fp32 [B, D]."""
    _check_args(x, cu_seqlens, mode, skip)
    skip = None if skip is None else skip.to(x.device)
    return _segment_pool_op(x, cu_seqlens.to(x.device), mode, skip)

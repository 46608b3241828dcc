"""Remove right padding: [B, S, *F] + cu_seqlens -> packed [T, *F]."""

import torch
from torch.library import triton_op, wrap_triton

from embzoo.kernels.dispatch import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    def copy_block_sizes(rows: int, feat: int) -> tuple[int, int]:
        """(BLOCK_T, BLOCK_F) for the pad/unpad copy kernels: about 4096 elements per program."""
        block_f = min(triton.next_power_of_2(feat), 1024)
        return max(1, min(triton.next_power_of_2(rows), 4096 // block_f)), block_f

    @triton.jit
    def _unpad_kernel(
        x_ptr,
        cu_ptr,
        out_ptr,
        stride_xb,
        stride_xs,
        S,
        F,
        n_t_blocks,
        BLOCK_T: tl.constexpr,
        BLOCK_F: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // n_t_blocks
        t0 = (pid % n_t_blocks) * BLOCK_T
        start = tl.load(cu_ptr + b)
        length = tl.minimum(tl.load(cu_ptr + b + 1) - start, S)
        if t0 < length:
            rows = t0 + tl.arange(0, BLOCK_T)
            cols = tl.program_id(1) * BLOCK_F + tl.arange(0, BLOCK_F)
            mask = (rows < length)[:, None] & (cols < F)[None, :]
            src = x_ptr + b.to(tl.int64) * stride_xb + rows.to(tl.int64)[:, None] * stride_xs + cols[None, :]
            dst = out_ptr + (start + rows).to(tl.int64)[:, None] * F + cols[None, :]
            tl.store(dst, tl.load(src, mask=mask), mask=mask)

    @triton_op("embzoo::unpad", mutates_args=())
    def _unpad_op(x: torch.Tensor, cu_seqlens: torch.Tensor, total: int) -> torch.Tensor:
        out = x.new_empty((total, *x.shape[2:]))
        if out.numel() == 0 or x.numel() == 0:
            return out
        batch, seq = x.shape[:2]
        x3 = x.reshape(batch, seq, -1)
        if x3.stride(2) != 1:
            x3 = x3.contiguous()
        feat = x3.shape[2]
        block_t, block_f = copy_block_sizes(seq, feat)
        n_t_blocks = triton.cdiv(seq, block_t)
        grid = (batch * n_t_blocks, triton.cdiv(feat, block_f))
        wrap_triton(_unpad_kernel)[grid](
            x3,
            cu_seqlens,
            out,
            x3.stride(0),
            x3.stride(1),
            seq,
            feat,
            n_t_blocks,
            BLOCK_T=block_t,
            BLOCK_F=block_f,
        )
        return out


def check_cu_seqlens(cu_seqlens: torch.Tensor, batch: int | None = None) -> None:
    """Raise ValueError unless cu_seqlens is a 1-D integer tensor of B + 1 offsets (B = batch when given)."""
    expected = "at least 1" if batch is None else str(batch + 1)
    wrong_size = cu_seqlens.numel() < 1 if batch is None else cu_seqlens.numel() != batch + 1
    if cu_seqlens.dim() != 1 or wrong_size or cu_seqlens.is_floating_point() or cu_seqlens.is_complex():
        raise ValueError(
            f"cu_seqlens must be a 1-D integer tensor of {expected} offsets, "
            f"got {cu_seqlens.dtype} of shape {tuple(cu_seqlens.shape)}"
        )


def _lengths(cu_seqlens: torch.Tensor) -> torch.Tensor:
    return cu_seqlens[1:] - cu_seqlens[:-1]


def unpad_ref(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Plain-torch unpad: x [B, S, *F] right-padded, cu_seqlens int32 [B+1] -> [cu[-1], *F], same dtype."""
    check_cu_seqlens(cu_seqlens, x.shape[0])
    seq_pos = torch.arange(x.shape[1], device=x.device)
    return x[seq_pos < _lengths(cu_seqlens).to(x.device)[:, None]]


def unpad_triton(x: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Triton unpad: x [B, S, *F] right-padded, cu_seqlens int32 [B+1] -> [cu[-1], *F], same dtype."""
    check_cu_seqlens(cu_seqlens, x.shape[0])
    total = int(cu_seqlens[-1]) if x.shape[0] > 0 else 0
    return _unpad_op(x, cu_seqlens.to(x.device), total)


def cu_seqlens_of(lengths: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sequence lengths int [B] -> (cu_seqlens int32 [B+1], max_seqlen)."""
    cu_seqlens = torch.nn.functional.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
    max_seqlen = int(lengths.max()) if lengths.numel() > 0 else 0
    return cu_seqlens, max_seqlen


def padding_offsets(attention_mask: torch.Tensor) -> torch.Tensor:
    """int64 [B]: the position of each row's first token in attention_mask [B, S] (0 when right-padded, S - length
    when left-padded); ValueError naming the rows whose ones are not one contiguous run."""
    if attention_mask.dim() != 2:
        raise ValueError(f"attention_mask must be 2-D [batch, seq], got shape {tuple(attention_mask.shape)}")
    mask = attention_mask.bool()
    lengths = mask.sum(dim=1)
    starts = torch.where(lengths > 0, mask.int().argmax(dim=1), 0)  # argmax: the first 1
    pos = torch.arange(mask.shape[1], device=mask.device)
    expected = (pos >= starts[:, None]) & (pos < (starts + lengths)[:, None])
    bad_rows = (mask != expected).any(dim=1).nonzero().flatten()
    if bad_rows.numel() > 0:
        raise ValueError(
            "each attention_mask row must hold its tokens in one run, padded on the right or on the left; rows "
            f"{bad_rows[:8].tolist()} are not"
        )
    return starts


def shift_rows(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """x [B, S, *F] with row b rotated towards the front by shift[b] (int [B]; negative: towards the back): with
    padding_offsets as shift a left-padded batch becomes right-padded, and -shift undoes it."""
    index = (torch.arange(x.shape[1], device=x.device) + shift.to(x.device)[:, None]) % x.shape[1]
    return torch.take_along_dim(x, index.view(*index.shape, *[1] * (x.dim() - 2)), dim=1)

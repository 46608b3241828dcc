"""PackedBatch: the model's input, a ragged batch flattened to one token stream with no padding."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from embzoo import kernels


@dataclass
class PackedBatch:
    """B sequences of T tokens in total. positions are 0-based within each sequence.

    key_lengths (None = every token) says how many leading tokens of each sequence serve as attention
    keys/values; every token is still a query (ColBERT query expansion: the [MASK] padding attends to the
    text, nothing attends to the [MASK] padding)."""

    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64
    cu_seqlens: torch.Tensor  # [B+1] int32, cu_seqlens[0] = 0, cu_seqlens[-1] = T
    max_seqlen: int
    token_type_ids: torch.Tensor | None = None  # [T] int64
    key_lengths: torch.Tensor | None = None  # [B] int32, 1 <= key_lengths[b] <= length of sequence b

    @classmethod
    def from_sequences(
        cls,
        ids: Sequence[Sequence[int]],
        type_ids: Sequence[Sequence[int]] | None = None,
        key_lengths: Sequence[int] | None = None,
    ) -> PackedBatch:
        """Pack token-id lists (each non-empty) into one CPU batch; key_lengths[b] in 1..len(ids[b])."""
        lengths = np.fromiter((len(s) for s in ids), dtype=np.int64, count=len(ids))
        if (lengths == 0).any():
            raise ValueError("every sequence needs at least one token; got an empty token list")
        cu = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=cu[1:])
        positions = np.arange(cu[-1], dtype=np.int64) - np.repeat(cu[:-1], lengths)
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(cu[-1]))
        types = None
        if type_ids is not None:
            types = torch.from_numpy(
                np.fromiter(itertools.chain.from_iterable(type_ids), dtype=np.int64, count=int(cu[-1]))
            )
        return cls(
            input_ids=torch.from_numpy(flat),
            positions=torch.from_numpy(positions),
            cu_seqlens=torch.from_numpy(cu.astype(np.int32)),
            max_seqlen=int(lengths.max(initial=0)),
            token_type_ids=types,
            key_lengths=None if key_lengths is None else _key_lengths(key_lengths, lengths),
        )

    @classmethod
    def from_padded(
        cls,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
        key_lengths: torch.Tensor | None = None,
    ) -> PackedBatch:
        """Pack padded input_ids [B, S] (attention_mask [B, S]: each row's ones in one run, right- or left-padded;
        token_type_ids [B, S]) on their device, as other frameworks hand them over; key_lengths int [B] as in
        from_sequences."""
        starts = kernels.padding_offsets(attention_mask)  # checks that each row's tokens are one run
        input_ids, token_type_ids = (  # each row's tokens moved to its front (right padding: a shift by 0)
            None if x is None else kernels.shift_rows(x, starts) for x in (input_ids, token_type_ids)
        )
        cu, max_len = kernels.cu_seqlens_of(attention_mask.bool().sum(dim=1))
        ids = kernels.unpad(input_ids, cu)
        starts = torch.repeat_interleave(cu[:-1].long(), (cu[1:] - cu[:-1]).long(), output_size=ids.numel())
        positions = torch.arange(ids.numel(), device=ids.device) - starts
        types = None if token_type_ids is None else kernels.unpad(token_type_ids, cu)
        keys = None if key_lengths is None else key_lengths.to(torch.int32)
        return cls(ids, positions, cu, max_len, types, keys)

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    def to(self, device: torch.device | str) -> PackedBatch:
        """Copy to device; pinned host memory makes the copy asynchronous."""
        return PackedBatch(
            moved(self.input_ids, device),
            moved(self.positions, device),
            moved(self.cu_seqlens, device),
            self.max_seqlen,
            moved(self.token_type_ids, device),
            moved(self.key_lengths, device),
        )


@dataclass(frozen=True)
class TokenRows:
    """Tokens of a packed batch whose final states are wanted (the ones a pooler or a head reads): the model's
    last layer computes its attention output and MLP for these rows only (keys and values still from every token).

    index int64 [R]: packed-stream rows grouped by sequence (a sequence's rows after the previous sequence's);
    seq int64 [R]: the sequence of each row (an empty sequence's rows stand on any valid token; the model returns
    zeros for them); per_sequence: the most rows any one sequence has (a host int, so attention pads without a sync)."""

    index: torch.Tensor
    seq: torch.Tensor
    per_sequence: int

    @classmethod
    def ends(cls, cu_seqlens: torch.Tensor, modes: Sequence[str], skip: torch.Tensor | None = None) -> TokenRows:
        """Each sequence's "first" (its first token after `skip` int [B] leading ones, or its first token when skip
        covers it all, as kernels.segment_pool) and/or "last" token, in `modes` order: rows b * len(modes) + m."""
        cu = cu_seqlens.long()
        ends = []
        for mode in modes:
            if mode == "first":
                skip_b = torch.zeros_like(cu[1:]) if skip is None else skip.to(cu).clamp(min=0)
                ends.append(cu[:-1] + torch.where(skip_b < cu[1:] - cu[:-1], skip_b, 0))
            elif mode == "last":
                ends.append(cu[1:] - 1)
            else:
                raise ValueError(f"token rows are taken at 'first' or 'last' tokens; got {mode!r}")
        index = torch.minimum(torch.stack(ends, dim=1).reshape(-1), cu[-1] - 1).clamp(min=0)  # in range when empty
        seq = torch.arange(cu.numel() - 1, device=cu.device).repeat_interleave(len(modes))
        return cls(index, seq, len(modes))

    def to(self, device: torch.device | str) -> TokenRows:
        """Copy to device; pinned host memory makes the copy asynchronous."""
        return TokenRows(moved(self.index, device), moved(self.seq, device), self.per_sequence)


def moved(t: torch.Tensor | None, device: torch.device | str) -> torch.Tensor | None:
    """t on device (None stays None); a host tensor bound for CUDA goes through pinned memory, so the copy is
    asynchronous."""
    if t is None:
        return None
    pin = torch.device(device).type == "cuda" and t.device.type == "cpu"
    return (t.pin_memory() if pin else t).to(device, non_blocking=pin)


def _key_lengths(key_lengths: Sequence[int], lengths: np.ndarray) -> torch.Tensor:
    """int32 [B] key lengths, checked against the sequence lengths; raises ValueError."""
    keys = np.asarray(key_lengths, dtype=np.int64)
    if keys.shape != lengths.shape:
        raise ValueError(f"key_lengths needs one entry per sequence ({len(lengths)}); got {keys.shape[0]}")
    bad = np.flatnonzero((keys < 1) | (keys > lengths))
    if bad.size:
        b = int(bad[0])
        raise ValueError(
            f"key_lengths[{b}] = {int(keys[b])} is outside 1..{int(lengths[b])} (the length of sequence {b}): "
            "at least one token and at most the whole sequence can serve as keys"
        )
    return torch.from_numpy(keys.astype(np.int32))

"""Backbone: embeddings → N blocks, all on a packed token stream (no padding anywhere)."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.config import ArchConfig
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.block import Block
from embzoo.modeling.embeddings import Embeddings


class Backbone(nn.Module):
    """PackedBatch → hidden states [T, D]. attn_backend forces one attention backend (None = auto)."""

    def __init__(self, cfg: ArchConfig, attn_backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.attn_backend = attn_backend
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))

    @property
    def max_seq_len(self) -> int:
        """Longest sequence the position table covers."""
        return self.cfg.max_positions - self.cfg.position_offset

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        if batch.max_seqlen > self.max_seq_len:
            raise ValueError(
                f"a sequence of {batch.max_seqlen} tokens exceeds the model's limit of {self.max_seq_len}; "
                "truncate the input (Embedder.encode does this for you)"
            )
        h = self.embed(batch)
        for layer in self.layers:
            h = layer(h, batch.cu_seqlens, batch.max_seqlen, self.attn_backend)
        return h

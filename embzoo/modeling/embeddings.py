"""Token (× scale) (+ learned absolute position) (+ token-type) embeddings on a packed stream, then a norm."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.config import ArchConfig
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.layers import make_norm


class Embeddings(nn.Module):
    """input ids [T] → hidden [T, D]. Positions are shifted by cfg.position_offset (RoBERTa: 2)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.pos = nn.Embedding(cfg.max_positions, cfg.hidden_size) if cfg.positions == "absolute" else None
        self.token_type = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size) if cfg.type_vocab_size else None
        self.norm = make_norm(cfg, layer=cfg.embed_norm_layer) if cfg.embed_norm else nn.Identity()

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        h = self.tok(batch.input_ids)
        if self.cfg.embed_scale != 1.0:  # Gemma: the scale is rounded to the weight dtype first
            h = h * torch.tensor(self.cfg.embed_scale, dtype=h.dtype)
        if self.pos is not None:
            h = h + self.pos(self.position_rows(batch))
        if self.token_type is not None:
            # no token types given means every token is type 0 (a single segment); looked up through the module,
            # so a task LoRA on it applies
            types = batch.token_type_ids if batch.token_type_ids is not None else batch.input_ids.new_zeros(1)
            h = h + self.token_type(types)
        return self.norm(h)

    def position_rows(self, batch: PackedBatch) -> torch.Tensor:
        """Rows of the position table [T]: positions + position_offset; with position_pad_id, as RoBERTa's
        create_position_ids_from_input_ids, a token of that id (a literal pad token in a text) takes row
        position_offset - 1 and the tokens after it count on without it."""
        rows = batch.positions + self.cfg.position_offset
        if self.cfg.position_pad_id is None:
            return rows
        pad = batch.input_ids == self.cfg.position_pad_id
        before = torch.cumsum(pad, 0) - pad.long()  # pad tokens ahead of each token in the stream
        starts = torch.arange(pad.numel(), device=pad.device) - batch.positions  # each token's sequence start
        return torch.where(pad, self.cfg.position_offset - 1, rows - (before - before[starts]))

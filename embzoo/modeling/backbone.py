"""Backbone: embeddings → N blocks → optional final norm, all on a packed token stream (no padding)."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.config import ArchConfig
from embzoo.modeling.batch import PackedBatch, TokenRows
from embzoo.modeling.block import Block, LayerContext
from embzoo.modeling.embeddings import Embeddings
from embzoo.modeling.layers import make_norm
from embzoo.modeling.positions import alibi_tensor, rotary_tables
from embzoo.modeling.task_lora import TaskLoRA, attach_task_lora

PADDED_KEYS = 4  # the last layer computes the rows alone while their keys, padded to [B, S], fill <= 4 × T slots


class Backbone(nn.Module):
    """PackedBatch → hidden states [T, D]. attn_backend forces one attention backend (None = auto).
    With cfg.lora_tasks, `task_lora` holds the per-task LoRA of every Linear and Embedding (else None)."""

    def __init__(self, cfg: ArchConfig, attn_backend: str | None = None):
        super().__init__()
        self.cfg = cfg
        self.attn_backend = attn_backend
        self.embed = Embeddings(cfg)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.num_layers))
        self.final_norm = make_norm(cfg) if cfg.final_norm else nn.Identity()
        self.task_lora: TaskLoRA | None = None
        if cfg.lora_tasks:
            self.task_lora = attach_task_lora(self, cfg.lora_tasks, cfg.lora_rank, cfg.lora_alpha)

    @property
    def max_seq_len(self) -> int:
        """Longest sequence the model accepts (the position table's rows for absolute positions)."""
        return self.cfg.max_positions - self.cfg.position_offset

    def contexts(self, batch: PackedBatch) -> dict[str, LayerContext]:
        """One LayerContext per layer type, computed once per forward (rotary tables, window, slopes); every
        one carries batch.key_lengths (which leading tokens are attention keys)."""
        cfg, out = self.cfg, {}
        for kind in set(cfg.layer_types) or {"full"}:
            local = kind == "local"
            rotary = None
            if cfg.positions == "rope":
                theta = cfg.rope_theta_local if local and cfg.rope_theta_local else cfg.rope_theta
                rotary = rotary_tables(cfg, batch, theta)
            alibi = alibi_tensor(cfg.num_heads, batch.input_ids.device) if cfg.positions == "alibi" else None
            window = (cfg.local_window, cfg.local_window) if local else None
            out[kind] = LayerContext(
                batch.cu_seqlens, batch.max_seqlen, rotary, window, alibi, self.attn_backend, batch.key_lengths
            )
        return out

    def forward(self, batch: PackedBatch, rows: TokenRows | None = None) -> torch.Tensor:
        """Hidden states [T, D], or [R, D] for `rows` only (zeros for the rows of an empty sequence): the last layer
        runs its attention output, MLP and norms for those rows alone (keys and values from every token), unless its
        keys padded to [B, S] would exceed PADDED_KEYS × T (one long sequence among many short ones: memory); then it
        runs every token and the rows are taken after it."""
        if batch.max_seqlen > self.max_seq_len:
            raise ValueError(
                f"a sequence of {batch.max_seqlen} tokens exceeds the model's limit of {self.max_seq_len}; "
                "truncate the input (Embedder.encode does this for you)"
            )
        contexts = self.contexts(batch)
        h = self.embed(batch)
        if rows is not None and not h.shape[0]:  # no sequence, or only empty ones
            return h.new_zeros(rows.index.shape[0], h.shape[1])
        narrow = rows is not None and batch.num_sequences * batch.max_seqlen <= PADDED_KEYS * h.shape[0]
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            h = layer(h, contexts[self.cfg.layer_type(i)], rows if narrow and i == last else None)
        if rows is None:
            return self.final_norm(h)
        h = self.final_norm(h if narrow else h[rows.index])
        lengths = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]
        return h.masked_fill((lengths[rows.seq] == 0)[:, None], 0)

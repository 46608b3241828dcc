"""EmbeddingModel: backbone → pooler → Dense stack, one vector per packed sequence."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.heads import Dense
from embzoo.modeling.latent_attention import LatentAttentionPooler
from embzoo.modeling.pooling import Pooler


class EmbeddingModel(nn.Module):
    """forward: PackedBatch → float32 [B, dimension] (before any normalization)."""

    def __init__(self, backbone: Backbone, pooler: Pooler | LatentAttentionPooler, dense: Sequence[Dense] = ()):
        super().__init__()
        self.backbone = backbone
        self.pooler = pooler
        self.dense = nn.ModuleList(dense)

    @property
    def dimension(self) -> int:
        if len(self.dense):
            return self.dense[-1].linear.out_features
        return self.pooler.output_dim(self.backbone.cfg.hidden_size)

    def forward(self, batch: PackedBatch, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = self.pooler(self.backbone(batch), batch.cu_seqlens, prompt_lengths)
        for layer in self.dense:
            x = layer(x)
        return x.float()

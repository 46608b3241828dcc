"""ClassifierScorer: a cross-encoder's backbone + sequence-classification head → one relevance logit per pair."""

from __future__ import annotations

import torch
from torch import nn

from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.heads import ClassificationHead


class ClassifierScorer(nn.Module):
    """forward: PackedBatch → float32 [B], the logit of a one-label head for each packed sequence (the head
    pools its own input: the first token, whose state alone the last layer computes, or the mean for ModernBERT's
    classifier_pooling "mean")."""

    def __init__(self, backbone: Backbone, head: ClassificationHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, batch: PackedBatch) -> torch.Tensor:
        rows = self.head.token_rows(batch.cu_seqlens)
        hidden = self.backbone(batch, rows)
        pooled = self.head.pool(hidden, batch.cu_seqlens) if rows is None else hidden.float()
        return self.head(pooled)[:, 0].float()

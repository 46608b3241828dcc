"""EmbeddingModel: a backbone and its output heads, all fed by one forward of the backbone.

Outputs: "sentence" (pooler → Dense stack, one vector per sequence), "tokens" (the token states), "sparse"
(a lexical head, embzoo.modeling.sparse) and "multivector" (embzoo.modeling.multivector); a model offers
"tokens" and those of the heads it has.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch, TokenRows
from embzoo.modeling.heads import Dense
from embzoo.modeling.latent_attention import LatentAttentionPooler
from embzoo.modeling.multivector import MultiVectorHead
from embzoo.modeling.pooling import Pooler
from embzoo.modeling.sparse import SpladeSparse, TokenWeightSparse


class EmbeddingModel(nn.Module):
    """forward: PackedBatch → float32 [B, dimension] sentence vectors (before any normalization); run: any
    outputs of one forward."""

    def __init__(
        self,
        backbone: Backbone,
        pooler: Pooler | LatentAttentionPooler | None,
        dense: Sequence[Dense] = (),
        *,
        sparse: TokenWeightSparse | SpladeSparse | None = None,
        multivector: MultiVectorHead | None = None,
    ):
        super().__init__()
        if pooler is None and dense:
            raise ValueError("Dense layers after no pooler: a multi-vector model's projection is its multivector head")
        self.backbone = backbone
        self.pooler = pooler
        self.dense = nn.ModuleList(dense)
        self.sparse = sparse
        self.multivector = multivector

    @property
    def outputs(self) -> tuple[str, ...]:
        """The output names this model produces, its main one first (sentence, else multivector, else sparse)."""
        heads = {"sentence": self.pooler, "multivector": self.multivector, "sparse": self.sparse}
        return (*(name for name, head in heads.items() if head is not None), "tokens")

    @property
    def dimension(self) -> int:
        """Width of the main output: the sentence vector, a token vector, or the vocabulary (sparse)."""
        main = self.outputs[0]
        if main == "sentence":
            if len(self.dense):
                return self.dense[-1].linear.out_features
            return self.pooler.output_dim(self.backbone.cfg.hidden_size)
        if main == "multivector":
            return self.multivector.dimension
        if main == "sparse":
            return self.sparse.vocab_size
        return self.backbone.cfg.hidden_size

    def pool(
        self,
        h: torch.Tensor,
        batch: PackedBatch,
        prompt_lengths: torch.Tensor | None = None,
        rows: TokenRows | None = None,
    ) -> torch.Tensor:
        """Token states [T, D], or the states [R, D] of the pooler's token_rows `rows` → float32 [B, dimension]."""
        x = self.pooler(h, batch.cu_seqlens, prompt_lengths) if rows is None else self.pooler.pool_rows(h, rows)
        for layer in self.dense:
            x = layer(x)
        return x.float()

    def forward(self, batch: PackedBatch, prompt_lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.run(batch, ("sentence",), prompt_lengths=prompt_lengths)["sentence"]

    def run(
        self,
        batch: PackedBatch,
        outputs: Sequence[str],
        *,
        prompt_lengths: torch.Tensor | None = None,
        rows: torch.Tensor | None = None,
        top_k: int | None = None,
    ) -> dict[str, Any]:
        """The named outputs of one backbone forward: sentence float32 [B, dimension]; tokens float32 [T, hidden];
        sparse SparseRows (top_k weights per sequence, None = all); multivector float32 [T', dim], the vectors of
        the token rows int64 [T'] (None: all; see MultiVectorHead.rows). When the sentence vector alone is asked for
        and the pooler reads single tokens (cls, last token), the last layer computes only those."""
        unknown = set(outputs) - set(self.outputs)
        if unknown:
            raise ValueError(f"this model has no {sorted(unknown)} output; it has {self.outputs}")
        pooled = self.pooler.token_rows(batch.cu_seqlens, prompt_lengths) if set(outputs) == {"sentence"} else None
        h = self.backbone(batch, pooled)
        out: dict[str, Any] = {}
        if "sentence" in outputs:
            out["sentence"] = self.pool(h, batch, prompt_lengths, pooled)
        if "tokens" in outputs:
            out["tokens"] = h.float()
        if "sparse" in outputs:
            out["sparse"] = self.sparse(h, batch, top_k)
        if "multivector" in outputs:
            out["multivector"] = self.multivector(h, rows)
        return out

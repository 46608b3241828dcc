"""Load a generative yes/no reranker (a catalog entry with `yes_no` set) as a Reranker: the causal backbone, its
LM head reduced to one fp32 score row, and the entry's prompt template (embzoo.yes_no_templates)."""

from __future__ import annotations

import torch

from embzoo.catalog import CatalogEntry
from embzoo.conversion.load import load_backbone
from embzoo.conversion.score_row import score_row
from embzoo.conversion.snapshot import Snapshot
from embzoo.conversion.stream import Transform
from embzoo.modeling.yes_no import ScoreRowScorer
from embzoo.reranker import Reranker
from embzoo.tokenization import fast_tokenizer
from embzoo.yes_no_templates import TEMPLATES


def load_yes_no_reranker(
    snapshot: Snapshot,
    entry: CatalogEntry,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_backend: str | None = None,
    max_seq_length: int | None = None,
    transform: Transform | None = None,
    name: str = "",
) -> Reranker:
    """The Reranker of `snapshot` with `entry`'s template; the backbone in `dtype`, the score row fp32, on `device`.

    max_seq_length: tokens per pair, template included (default instruction); None = the reference's own
    length (entry.max_seq_length is its max_length argument), capped at the model's positions.
    transform: applied to each backbone tensor as it is read (LoRA merging, see load_backbone).
    """
    if entry.yes_no not in TEMPLATES:
        raise ValueError(f"{entry.hub_id}: unknown yes/no template {entry.yes_no!r}; known: {sorted(TEMPLATES)}")
    template = TEMPLATES[entry.yes_no]
    backbone, _ = load_backbone(
        snapshot, attn_backend=attn_backend, with_head=False, dtype=dtype, device=device, transform=transform
    )
    tokenizer, _ = fast_tokenizer(snapshot.model_dir)
    inputs = template(tokenizer, entry.max_seq_length)
    limit = backbone.max_seq_len
    if max_seq_length is not None and max_seq_length > limit:
        raise ValueError(
            f"max_seq_length {max_seq_length} exceeds the model's position limit {limit}; pass {limit} or less"
        )
    total = min(inputs.max_length, limit) if max_seq_length is None else max_seq_length
    if total != inputs.max_length:  # the template's own tokens stay; the query/document budget changes
        inputs = template(tokenizer, total - (inputs.max_length - inputs.length))
    row = score_row(snapshot, *inputs.score_tokens()).to(device)
    activation = entry.activation or template.activation
    return Reranker(ScoreRowScorer(backbone, row), inputs, activation=activation, name=name)

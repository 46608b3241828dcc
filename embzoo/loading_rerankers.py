"""Load a generative reranker (a catalog entry with `reranker` set): the causal backbone, the scorer its kind builds
on it, the kind's prompt template, wrapped as the kind's reranker class.

KINDS, keyed by the catalog's `reranker` value:
- yes/no (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma): the LM head reduced to one fp32 score row
  (embzoo.conversion.score_row), a byte-exact pair template (embzoo.yes_no_templates), a Reranker.
- listwise (jina-reranker-v3): the projector read strictly from projector.0 / projector.2, the block prompt
  builder (embzoo.listwise_templates), a ListwiseReranker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import nn

from embzoo.catalog import CatalogEntry
from embzoo.conversion.load import check_max_seq_length, load_backbone
from embzoo.conversion.rules import Drop, Rule
from embzoo.conversion.score_row import score_row
from embzoo.conversion.snapshot import Snapshot, SnapshotError, weight_files
from embzoo.conversion.stream import Transform, load_state
from embzoo.listwise_reranker import ListwiseReranker
from embzoo.listwise_templates import JinaV3Prompts
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.listwise import MarkerProjector, projector
from embzoo.modeling.yes_no import ScoreRowScorer
from embzoo.reranker import Ranker, Reranker
from embzoo.tokenization import fast_tokenizer
from embzoo.yes_no_templates import BgeGemmaPairs, MxbaiRerankV2Pairs, Qwen3RerankerPairs

PROJECTOR = r"^projector\."
PROJECTOR_WEIGHTS = [Rule(PROJECTOR + r"(?P<i>0|2)\.weight$", "{i}.weight"), Drop("^(?!projector\\.)")]


def load_projector(snapshot: Snapshot, *, device: torch.device | str = "cpu") -> nn.Sequential:
    """The checkpoint's projector (projector.0.weight [I, D], projector.2.weight [P, I]) in float32 on `device`;
    strict: raises WeightMismatch for missing, misshapen or unknown projector tensors."""
    folder = snapshot.weights_dir or snapshot.model_dir
    shapes = {n: s for f in weight_files(folder) for n, s in f.shapes.items()}
    if "projector.0.weight" not in shapes or "projector.2.weight" not in shapes:
        raise SnapshotError(f"{folder}: a listwise reranker needs projector.0.weight and projector.2.weight; not found")
    inner, hidden = shapes["projector.0.weight"]
    with torch.device("meta"):
        head = projector(hidden, inner, shapes["projector.2.weight"][0])
    expected = {n: tuple(t.shape) for n, t in head.state_dict().items()}
    head.load_state_dict(load_state(folder, PROJECTOR_WEIGHTS, expected, device=device), strict=True, assign=True)
    return head


def score_row_scorer(snapshot: Snapshot, backbone: Backbone, inputs: Any, device: torch.device | str) -> nn.Module:
    """The backbone and the fp32 score row of the template's score tokens."""
    return ScoreRowScorer(backbone, score_row(snapshot, *inputs.score_tokens()).to(device))


def marker_projector(snapshot: Snapshot, backbone: Backbone, prompts: Any, device: torch.device | str) -> nn.Module:
    """The backbone and the checkpoint's projector at the prompts' marker tokens."""
    return MarkerProjector(backbone, load_projector(snapshot, device=device), prompts.query_id, prompts.doc_id)


class Kind(NamedTuple):
    template: Any  # its sized(tokenizer, reference_length, max_seq_length, positions) builds the inputs
    scorer: Callable[[Snapshot, Backbone, Any, torch.device | str], nn.Module]
    wrapper: Callable[..., Ranker]  # (scorer, inputs, *, activation, name)
    ignore: tuple[Drop, ...] = ()  # checkpoint weights the backbone leaves to the scorer


KINDS: dict[str, Kind] = {
    "qwen3_reranker": Kind(Qwen3RerankerPairs, score_row_scorer, Reranker),
    "mxbai_rerank_v2": Kind(MxbaiRerankV2Pairs, score_row_scorer, Reranker),
    "bge_reranker_gemma": Kind(BgeGemmaPairs, score_row_scorer, Reranker),
    "jina_v3": Kind(JinaV3Prompts, marker_projector, ListwiseReranker, (Drop(PROJECTOR),)),
}


def load_reranker(
    snapshot: Snapshot,
    entry: CatalogEntry,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_backend: str | None = None,
    max_seq_length: int | None = None,
    transform: Transform | None = None,
    name: str = "",
) -> Ranker:
    """The reranker of `snapshot` as `entry.reranker`'s kind; the backbone in `dtype`, the scorer's own weights
    float32, on `device`. max_seq_length: a yes/no pair's tokens (template included, default instruction) or what
    one listwise block prompt fills; None = the reference's own, capped at the model's positions.
    transform: applied to each backbone tensor as it is read (LoRA merging, see load_backbone)."""
    if entry.reranker not in KINDS:
        raise ValueError(f"{entry.hub_id}: unknown reranker kind {entry.reranker!r}; known: {sorted(KINDS)}")
    kind = KINDS[entry.reranker]
    backbone, _ = load_backbone(
        snapshot,
        attn_backend=attn_backend,
        with_head=False,
        dtype=dtype,
        device=device,
        transform=transform,
        ignore=kind.ignore,
    )
    check_max_seq_length(max_seq_length, backbone.max_seq_len)
    tokenizer, _ = fast_tokenizer(snapshot.model_dir)
    inputs = kind.template.sized(tokenizer, entry.max_seq_length, max_seq_length, backbone.max_seq_len)
    scorer = kind.scorer(snapshot, backbone, inputs, device)
    return kind.wrapper(scorer, inputs, activation=entry.activation or inputs.activation, name=name)

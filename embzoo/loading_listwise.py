"""Load a listwise reranker (a catalog entry with `listwise` set: jina-reranker-v3) as a ListwiseReranker: the causal
backbone, the projector read strictly from the checkpoint's projector.0 / projector.2 weights, and the entry's
prompt builder (embzoo.listwise_templates)."""

from __future__ import annotations

import torch

from embzoo.catalog import CatalogEntry
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import Drop, Rule
from embzoo.conversion.snapshot import Snapshot, SnapshotError, weight_files
from embzoo.conversion.stream import Transform, load_state
from embzoo.listwise_reranker import ListwiseReranker
from embzoo.listwise_templates import TEMPLATES
from embzoo.modeling.listwise import MarkerProjector, projector
from embzoo.tokenization import fast_tokenizer

PROJECTOR = r"^projector\."
PROJECTOR_WEIGHTS = [Rule(PROJECTOR + r"(?P<i>0|2)\.weight$", "{i}.weight"), Drop("^(?!projector\\.)")]


def load_projector(snapshot: Snapshot, *, device: torch.device | str = "cpu") -> torch.nn.Sequential:
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


def load_listwise_reranker(
    snapshot: Snapshot,
    entry: CatalogEntry,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    attn_backend: str | None = None,
    max_seq_length: int | None = None,
    transform: Transform | None = None,
    name: str = "",
) -> ListwiseReranker:
    """The ListwiseReranker of `snapshot` with `entry`'s prompt builder; the backbone in `dtype`, the projector
    float32, on `device`. max_seq_length: the tokens a block prompt fills (None = the tokenizer's
    model_max_length, as the reference, capped at the model's positions). transform: applied to each backbone
    tensor as it is read (LoRA merging, see load_backbone)."""
    if entry.listwise not in TEMPLATES:
        raise ValueError(f"{entry.hub_id}: unknown listwise template {entry.listwise!r}; known: {sorted(TEMPLATES)}")
    backbone, _ = load_backbone(
        snapshot,
        attn_backend=attn_backend,
        with_head=False,
        dtype=dtype,
        device=device,
        transform=transform,
        ignore=[Drop(PROJECTOR)],
    )
    limit = backbone.max_seq_len
    if max_seq_length is not None and max_seq_length > limit:
        raise ValueError(
            f"max_seq_length {max_seq_length} exceeds the model's position limit {limit}; pass {limit} or less"
        )
    tokenizer, _ = fast_tokenizer(snapshot.model_dir)
    context = min(tokenizer.model_max_length, limit) if max_seq_length is None else max_seq_length
    prompts = TEMPLATES[entry.listwise](tokenizer, context, positions=limit)
    scorer = MarkerProjector(backbone, load_projector(snapshot, device=device), prompts.query_id, prompts.doc_id)
    return ListwiseReranker(scorer, prompts, activation=entry.activation or prompts.activation, name=name)

"""Cross-encoder rerankers: a *ForSequenceClassification checkpoint scores the tokenizer's pair encoding of
(query, document) with its classification head's one logit.

As sentence-transformers' CrossEncoder (6.x) and transformers compute it:
- Pairs: tokenizer(queries, documents, truncation="longest_first", max_length=L), the tokenizer's pair
  template ([CLS] q [SEP] d [SEP] for BERT, <s> q </s></s> d </s> for XLM-R) on its truncation side;
  token-type ids (0 for the query part, 1 for the document's) only where the tokenizer returns them
  (its model_input_names), else none (the model's type row 0).
- Prompts (config_sentence_transformers.json "prompts", "default_prompt_name", as CrossEncoder saves them): the
  prompt is prepended to the query, the default one unless the call passes another as `instruction`; a checkpoint
  without prompts takes no instruction.
- One label only: CrossEncoder.rank refuses other label counts, and so does embzoo (a 2-label
  classifier's softmax is not one relevance score).
- Default activation: the catalog entry's `activation` (the model card's output), else
  config_sentence_transformers.json "activation_fn", else config.json
  "sentence_transformers": {"activation_fn"}, else the legacy config.json "sbert_ce_default_activation_function"
  (the ms-marco cross-encoders store Identity: raw logits), else Sigmoid.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from tokenizers import Tokenizer

from embzoo.config import UnsupportedConfig
from embzoo.conversion.load import num_labels
from embzoo.conversion.snapshot import Snapshot, read_json
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.classifier import ClassifierScorer
from embzoo.modeling.heads import ClassificationHead
from embzoo.registry import family_for, head_key
from embzoo.reranker import EncodedPairs, Reranker
from embzoo.tokenization import fast_tokenizer, warn_truncated

log = logging.getLogger(__name__)

# the activation class (last part of sentence-transformers' dotted path) → Reranker activation
ST_ACTIVATIONS = {"Sigmoid": "sigmoid", "Identity": "none"}


def check_classifier(config: dict) -> None:
    """Raise UnsupportedConfig unless a classifier config.json has a one-label head embzoo converts."""
    family = family_for(config)
    key = head_key(config)
    if not family.HEADS.get(key):
        raise UnsupportedConfig(
            f"{config.get('architectures')}: embzoo has no sequence-classification head for {key!r}; "
            "cross-encoders run on BERT, RoBERTa/XLM-R (and its flash layout, jina-reranker-v2), GTE, ModernBERT, "
            "NomicBert and jina-bert-v2 checkpoints"
        )
    labels = num_labels(config)
    if labels != 1:
        raise UnsupportedConfig(
            f"{config.get('architectures')} has {labels} labels; a reranker scores with one relevance logit "
            "(num_labels 1), as sentence-transformers' CrossEncoder.rank requires"
        )


def default_activation(snapshot: Snapshot) -> str:
    """The activation sentence-transformers' CrossEncoder applies to this checkpoint's logit by default."""
    st_file = snapshot.root / "config_sentence_transformers.json"
    config = snapshot.config
    stated = [
        (st_file.name, read_json(st_file).get("activation_fn") if st_file.is_file() else None),
        ("config.json sentence_transformers", (config.get("sentence_transformers") or {}).get("activation_fn")),
        ("config.json sbert_ce_default_activation_function", config.get("sbert_ce_default_activation_function")),
    ]
    where, path = next(((where, path) for where, path in stated if path is not None), (None, None))
    if path is None:
        return "sigmoid"
    short = path.rsplit(".", 1)[-1]
    if short not in ST_ACTIVATIONS:
        log.warning(
            "%s: %s names activation %r, which embzoo does not apply (it applies %s); scores default to "
            "sigmoid, pass activation='none' for raw logits",
            snapshot.root,
            where,
            path,
            sorted(ST_ACTIVATIONS),
        )
        return "sigmoid"
    return ST_ACTIVATIONS[short]


class PairTokenizer:
    """PairInputs of a cross-encoder: the tokenizer's own pair encoding, longest_first truncation to
    max_length tokens (special tokens included); the instruction is a prompt put before the query, taken only by
    checkpoints that store prompts (default_instruction: their default prompt, "" without one; None: no prompts)."""

    def __init__(
        self,
        backend: Tokenizer,
        max_length: int,
        *,
        type_ids: bool,
        side: str = "right",
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
    ):
        self.default_instruction = prompts.get(default_prompt_name or "", "") if prompts else None
        self.backend = backend
        self.backend.no_padding()
        self.backend.enable_truncation(max_length, strategy="longest_first", direction=side)
        self.max_length = max_length
        self.type_ids = type_ids

    @classmethod
    def from_snapshot(cls, snapshot: Snapshot, max_length: int) -> PairTokenizer:
        """The snapshot's tokenizer as transformers loads it (type ids where its model_input_names list them) and
        its sentence-transformers prompts."""
        hf, backend = fast_tokenizer(snapshot.model_dir)
        type_ids, pipe = "token_type_ids" in hf.model_input_names, snapshot.pipeline
        return cls(
            backend,
            max_length,
            type_ids=type_ids,
            side=hf.truncation_side,
            prompts=pipe.prompts,
            default_prompt_name=pipe.default_prompt_name,
        )

    def encode(self, queries: Sequence[str], documents: Sequence[str], instruction: str | None) -> EncodedPairs:
        """Token ids (and type ids) of each pair (instruction + queries[i], documents[i]); instruction None = the
        default prompt."""
        prefix = (self.default_instruction if instruction is None else instruction) or ""
        pairs = [(prefix + q, d) for q, d in zip(queries, documents, strict=True)]
        encodings = self.backend.encode_batch(pairs, add_special_tokens=True)
        return EncodedPairs(
            ids=[e.ids for e in encodings],
            type_ids=[e.type_ids for e in encodings] if self.type_ids else None,
            truncated=sum(1 for e in encodings if e.overflowing),
        )

    def warn_truncated(self, truncated: int, total: int) -> None:
        """The one warning per call that names how many pairs were cut."""
        how = f"longer than {self.max_length} tokens and were truncated to that limit"
        how += " (the longer of query and document first)"
        warn_truncated(truncated, total, "(query, document) pairs", how)


def cross_encoder(
    snapshot: Snapshot, backbone: Backbone, head: ClassificationHead, max_length: int, name: str, activation: str = ""
) -> Reranker:
    """A Reranker over a loaded classifier backbone + head, with the snapshot's tokenizer; activation: the
    catalog's default ("" = the snapshot's own, default_activation)."""
    inputs = PairTokenizer.from_snapshot(snapshot, max_length)
    activation = activation or default_activation(snapshot)
    return Reranker(ClassifierScorer(backbone, head), inputs, activation=activation, name=name)

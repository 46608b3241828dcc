"""sentence-transformers integration: an embzoo model as a sentence-transformers model whose module pipeline runs
embzoo's packed forward, so code written for sentence-transformers (encode, encode_query, similarity, predict, rank,
evaluators) runs on embzoo.

Embedder.to_sentence_transformer() gives the class of the model's main output: SentenceTransformer (sentence
vectors; ST's Normalize module follows when the model normalizes), SparseEncoder (SPLADE) or MultiVectorEncoder
(ColBERT); Reranker.to_cross_encoder() gives a CrossEncoder. Each holds one EmbzooModule, which shares the embzoo
model's weights (`.to(device)` moves both) and copies its settings: prompts, default prompt, similarity function,
truncate_dim, max_seq_length (settable on the copy alone), a reranker's activation.

What the module computes is what embzoo computes for the same text: ST prepends the prompt it resolved, and the
module tokenizes prompt + text as Embedder.encode does (the model's text suffix and end token, the pool skips of a
prompt left out of the pool), so the vectors are those of the native SentenceTransformer. A model with task adapters
(jina-embeddings-v3) takes encode(texts, task=..., prompt_name=...) as its own sentence-transformers module does: the
task picks the adapter, prompt_name its instruction. Inference only.

Saving is refused: sentence-transformers 6 imports a module class outside its own package only with
trust_remote_code=True, so a saved folder naming EmbzooModule would not load without it. The error names
`embzoo export`, which writes a folder sentence-transformers loads natively.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import cached_property
from typing import Any, TypeVar

import torch

try:  # MultiVectorEncoder and the base modules' preprocess(inputs, prompt, task) came with sentence-transformers 6
    from sentence_transformers import CrossEncoder, MultiVectorEncoder, SentenceTransformer, SparseEncoder
    from sentence_transformers.base.modules import InputModule, Normalize
except ImportError as error:
    raise ImportError(
        f"embzoo's sentence-transformers adapter needs sentence-transformers>=6 ({error}): "
        "pip install 'embzoo[sentence-transformers]'"
    ) from error

from embzoo import kernels
from embzoo.api import ROLE_PROMPTS, Embedder
from embzoo.conversion.load import check_max_seq_length
from embzoo.conversion.snapshot import PipelineSpec
from embzoo.cross_encoder import PairTokenizer
from embzoo.modeling.batch import PackedBatch
from embzoo.reranker import Reranker
from embzoo.tokenization import ModelInputs, fast_tokenizer

ST = TypeVar("ST", SentenceTransformer, SparseEncoder, MultiVectorEncoder, CrossEncoder)


def _padded(ids: list[list[int]], rows: list[Sequence] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded int64 [B, S] of the per-text rows (default: ids; padded with 0) and the attention mask [B, S]."""
    rows = ids if rows is None else rows
    width = max(len(s) for s in ids)
    out = torch.zeros(len(ids), width, dtype=torch.int64)
    mask = torch.zeros(len(ids), width, dtype=torch.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = torch.as_tensor(row, dtype=torch.int64)
        mask[i, : len(row)] = 1
    return out, mask


class EmbzooModule(InputModule):
    """An embzoo Embedder or Reranker as sentence-transformers' input module: preprocess(inputs, prompt, task) → the
    padded features {input_ids, attention_mask [B, S], ...} of what embzoo tokenizes; forward(features) → embzoo's
    packed forward, filling what the model class reads: sentence_embedding float32 [B, D] and token_embeddings
    float32 [B, S, hidden] (SentenceTransformer), sentence_embedding [B, vocab] (SparseEncoder), token_embeddings
    [B, S, dim] with attention_mask the tokens kept (MultiVectorEncoder), scores [B, 1] logits (CrossEncoder)."""

    def __init__(self, loaded: Embedder | Reranker):
        super().__init__()
        self.loaded = copy.copy(loaded)  # its own tokenizer once max_seq_length is set; the weights are shared
        self.model = loaded.model if isinstance(loaded, Embedder) else loaded.scorer
        self.kind = loaded.model.outputs[0] if isinstance(loaded, Embedder) else "scores"
        self.task_lora = loaded.model.backbone.task_lora if isinstance(loaded, Embedder) else None
        if self.task_lora is not None:  # encode(task=...) reaches forward, as with jina-embeddings-v3's own module
            self.forward_kwargs = {"task"}

    @cached_property
    def tokenizer(self) -> Any:
        """The model folder's transformers tokenizer, for sentence-transformers code that reads model.tokenizer
        (SparseEncoder.decode); preprocess tokenizes with embzoo's own."""
        return fast_tokenizer(self.loaded.origin.snapshot.model_dir)[0]

    @property
    def max_seq_length(self) -> int:
        """Inputs are truncated to this many tokens (special tokens included; a reranker: per pair)."""
        return self.loaded.max_seq_length

    @max_seq_length.setter
    def max_seq_length(self, value: int) -> None:
        if self.kind not in ("sentence", "sparse"):
            raise ValueError(
                f"max_seq_length of {self.loaded.name} is fixed here; load it with "
                f"embzoo.load(..., max_seq_length={value}) instead"
            )
        check_max_seq_length(value, self.model.backbone.max_seq_len)
        self.loaded.tokenizer = self.loaded.tokenizer.with_max_length(value)

    def get_embedding_dimension(self) -> int | None:
        """Length of the vectors (a sparse model: the vocabulary); None for a reranker."""
        return None if self.kind == "scores" else self.loaded.model.dimension  # ST applies truncate_dim itself

    def __repr__(self) -> str:
        return f"EmbzooModule({self.loaded!r})"

    def preprocess(
        self, inputs: Sequence[Any], prompt: str | None = None, task: str | None = None, **_: Any
    ) -> dict[str, torch.Tensor]:
        """Texts (a reranker: (query, document) pairs, the prompt prepended to the query as sentence-transformers
        does) → padded features; task "query" | "document" picks a ColBERT input's role."""
        if self.kind == "scores":
            return self._pair_features(inputs, prompt or "")
        texts = list(inputs)
        if self.kind == "multivector":
            if task not in self.loaded.late.roles or prompt:
                raise ValueError(
                    f"{self.loaded.name} encodes queries and documents differently, with its own markers: call "
                    "encode_query or encode_document (without a prompt)"
                )
            encoded = self.loaded.late.encode(texts, task)
            self.loaded.late.warn_truncated(encoded.truncated, len(texts), task)
        else:
            encoded = self.loaded.tokenize(texts, prompt=prompt or "")
            self.loaded.tokenizer.warn_truncated(encoded.truncated, len(texts))
        return self._text_features(encoded)

    def _text_features(self, encoded: ModelInputs) -> dict[str, torch.Tensor]:
        input_ids, attention_mask = _padded(encoded.ids)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if encoded.skips is not None:
            features["prompt_length"] = torch.from_numpy(encoded.skips.astype("int64"))
        if encoded.key_lengths is not None:
            features["key_lengths"] = torch.tensor(encoded.key_lengths, dtype=torch.int64)
        if encoded.keep is not None:
            features["keep"] = _padded(encoded.ids, encoded.keep)[0].bool()
        return features

    def _pair_features(self, pairs: Sequence[Sequence[str]], prompt: str) -> dict[str, torch.Tensor]:
        queries, documents = [str(pair[0]) for pair in pairs], [str(pair[1]) for pair in pairs]
        if isinstance(self.loaded.inputs, PairTokenizer):  # ST resolved the prompt (its default too): exactly that
            encoded = self.loaded.inputs.encode(queries, documents, prompt)
        else:  # a yes/no template keeps its own default instruction; a prompt goes before the query
            encoded = self.loaded.inputs.encode([prompt + q for q in queries], documents, None)
        self.loaded.inputs.warn_truncated(encoded.truncated, len(pairs))
        input_ids, attention_mask = _padded(encoded.ids)
        features = {"input_ids": input_ids, "attention_mask": attention_mask}
        if encoded.type_ids is not None:
            features["token_type_ids"] = _padded(encoded.ids, encoded.type_ids)[0]
        return features

    def forward(self, features: dict[str, Any], task: str | None = None, **_: Any) -> dict[str, Any]:
        """One packed forward of the batch, the outputs padded back to the batch's width S; task: a task adapter of
        the model (jina-embeddings-v3; its prompt is ST's prompt_name), else base weights (encode_query /
        encode_document pass the roles "query" / "document")."""
        if self.task_lora is None or task is None or (task in ROLE_PROMPTS and task not in self.task_lora.tasks):
            return self._forward(features)
        with self.task_lora.active(task):  # ValueError naming the tasks for an unknown one
            return self._forward(features)

    def _forward(self, features: dict[str, Any]) -> dict[str, Any]:
        input_ids, attention_mask = features["input_ids"], features["attention_mask"]
        batch = PackedBatch.from_padded(
            input_ids, attention_mask, features.get("token_type_ids"), features.get("key_lengths")
        )
        if self.kind == "scores":
            return features | {"scores": self.model(batch).float()[:, None]}
        width = input_ids.shape[1]
        if self.kind == "sentence":
            skips = features.get("prompt_length")
            out = self.model.run(batch, ("sentence", "tokens"), prompt_lengths=None if skips is None else skips.int())
            tokens = kernels.pad(out["tokens"], batch.cu_seqlens, width)
            return features | {"sentence_embedding": out["sentence"], "token_embeddings": tokens}
        if self.kind == "sparse":
            rows = self.model.run(batch, ("sparse",))["sparse"]
            count = batch.num_sequences
            dense = torch.zeros(count, self.loaded.dimension, device=input_ids.device)
            row_of = torch.repeat_interleave(torch.arange(count, device=input_ids.device), rows.offsets.diff())
            dense[row_of, rows.ids] = rows.weights
            return features | {"sentence_embedding": dense}
        vectors = kernels.pad(self.model.run(batch, ("multivector",))["multivector"], batch.cu_seqlens, width)
        keep = features.get("keep", attention_mask.bool())
        return features | {"token_embeddings": vectors, "attention_mask": keep & attention_mask.bool()}

    def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
        """Refused (see the module docstring); the error names the folder embzoo can write instead."""
        origin = self.loaded.origin
        source = origin.snapshot.root if origin is not None else "SRC"
        if self.kind == "sentence":
            recipe = f" --recipe {origin.recipe}" if origin is not None and origin.recipe else ""
            instead = (
                f"write a folder sentence-transformers loads natively with "
                f"`embzoo export DST --model {source}{recipe} --format sentence-transformers`"
            )
        else:
            instead = f"load the source folder {source} with sentence-transformers itself"
        raise ValueError(
            f"a sentence-transformers model running on embzoo is not saved as such (sentence-transformers would load "
            f"embzoo's module only with trust_remote_code=True); {instead}"
        )


def sentence_transformer(embedder: Embedder) -> SentenceTransformer | SparseEncoder | MultiVectorEncoder:
    """The sentence-transformers model of the embedder's main output, running on embzoo (see the module docstring)."""
    module = EmbzooModule(embedder)
    pipe = embedder.origin.snapshot.pipeline if embedder.origin is not None else PipelineSpec()
    kinds = {"sentence": SentenceTransformer, "sparse": SparseEncoder, "multivector": MultiVectorEncoder}
    cls = kinds[module.kind]
    similarity = pipe.similarity_fn_name
    options: dict[str, Any] = dict(
        device=str(embedder.device),
        prompts=embedder.prompts,
        default_prompt_name=embedder.default_prompt_name,
        similarity_fn_name=similarity if similarity in cls.SUPPORTED_SIMILARITY_FN_NAMES else None,
    )
    if cls is SparseEncoder:
        return _saving_refused(SparseEncoder(modules=[module], max_active_dims=embedder.max_active_dims, **options))
    if cls is MultiVectorEncoder:
        return _saving_refused(MultiVectorEncoder(modules=[module], **options))
    modules = [module, Normalize()] if embedder.normalize else [module]
    return _saving_refused(SentenceTransformer(modules=modules, truncate_dim=embedder.truncate_dim, **options))


def cross_encoder(reranker: Reranker) -> CrossEncoder:
    """A sentence-transformers CrossEncoder running on the reranker, its activation the reranker's default, with a
    cross-encoder checkpoint's prompts."""
    activation = torch.nn.Sigmoid() if reranker.activation == "sigmoid" else torch.nn.Identity()
    pipe = reranker.origin.snapshot.pipeline if reranker.origin is not None else PipelineSpec()
    prompts = {"prompts": pipe.prompts, "default_prompt_name": pipe.default_prompt_name}
    model = CrossEncoder(
        modules=[EmbzooModule(reranker)],
        device=str(reranker.device),
        activation_fn=activation,
        **(prompts if isinstance(reranker.inputs, PairTokenizer) and pipe.prompts else {}),
    )
    return _saving_refused(model)


def _saving_refused(model: ST) -> ST:
    """The model, its save and save_pretrained refusing before anything is written: sentence-transformers writes its
    own config files first and calls each module's save after, so the module's refusal alone left a half-written
    folder."""
    model.save = model.save_pretrained = model[0].save
    return model

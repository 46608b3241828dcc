"""MTEB integration: embzoo models as mteb encoders and cross-encoders, with a ModelMeta from the catalog.

    import mteb
    from embzoo.integrations.mteb import get_model
    mteb.evaluate(get_model("BAAI/bge-small-en-v1.5"), mteb.get_tasks(tasks=["SciFact"]))

EmbzooEncoder (mteb's EncoderProtocol) runs an Embedder's sentence vectors; EmbzooCrossEncoder (CrossEncoderProtocol)
runs a Reranker or ListwiseReranker over mteb's (query, document) pairs, for tasks with pre-ranked candidates
(reranking). Both take every text of mteb's DataLoader and encode or score them in one call, so embzoo packs them
into length-sorted token-budget batches: mteb's batch_size is not used, `batch_tokens` sets the budget.

Prompts, as mteb's own wrappers choose them:
- a model with an instruction template (Qwen3-Embedding, e5-mistral, NV-Embed, …), as InstructSentenceTransformerModel
  with apply_instruction_to_passages=False: queries and symmetric inputs (prompt_type None) get the task's instruction
  in the template (AbsEncoder.get_task_instruction: `prompts_dict` by task name / task type / prompt type, else the
  task's own prompt; no template around an empty instruction); documents get the model's document prompt, if any.
- a model with task adapters (jina-embeddings-v3), as mteb's JinaWrapper: `model_prompts` map mteb keys (the lookup
  below) to task names (default: mteb's own mapping for jina-embeddings-v3, TASK_ADAPTERS); the task found selects its
  adapter and instruction (Embedder.encode(task=...)); none found: the base weights, no instruction.
- any other model, as SentenceTransformerEncoderWrapper: `model_prompts` (default: the model's prompts; keys that name
  no task, task type or prompt type are dropped with mteb's warning) looked up by task name + prompt type, task name,
  task type + prompt type, task type, prompt type; else a query takes the "query" prompt and a document the first of
  "document" / "passage" / "corpus" it finds (sentence-transformers' encode_document before version 6, which gives
  every model an empty "document" prompt ahead of them; mteb registers e5 with "passage: " for documents), else the
  model's default prompt. `model_prompts`, when given, replace the model's prompts there too, as in mteb.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.similarity_functions import cos_sim, dot_score, pairwise_cos_sim, pairwise_dot_score
from mteb.types import OutputDType, PromptType

import embzoo
from embzoo import api, catalog
from embzoo.api import Embedder
from embzoo.catalog import CatalogEntry
from embzoo.listwise_reranker import ListwiseReranker
from embzoo.model_cards import is_reranker, kind
from embzoo.reranker import Ranker, Reranker

if TYPE_CHECKING:
    from mteb.abstasks.task_metadata import TaskMetadata
    from torch.utils.data import DataLoader

# the prompt names sentence-transformers' encode_query / encode_document fall back to, first found wins
ROLE_PROMPTS = {PromptType.query: api.ROLE_PROMPTS["query"], PromptType.document: api.ROLE_PROMPTS["document"]}
SIMILARITIES = {"cosine": (cos_sim, pairwise_cos_sim), "dot": (dot_score, pairwise_dot_score)}
# mteb's routing of jina-embeddings-v3 (its registry's model_prompts): mteb key → task adapter
TASK_ADAPTERS = {
    "Retrieval-query": "retrieval.query",
    "Retrieval-document": "retrieval.passage",
    "Clustering": "separation",
    "Classification": "classification",
    "STS": "text-matching",
    "PairClassification": "classification",
    "BitextMining": "text-matching",
    "MultilabelClassification": "classification",
    "Reranking": "separation",
    "Summarization": "text-matching",
}
# the catalog's language codes as mteb's ISO 639-3 + script; "multilingual" lists none (languages None = unknown)
# and programming languages ("code") are not named
LANGUAGES = {"en": "eng-Latn", "de": "deu-Latn", "es": "spa-Latn", "zh": "zho-Hans"}
UNLISTED_LANGUAGES = ("multilingual", "code")


def _texts(inputs: DataLoader) -> list[str]:
    """Every text of an mteb DataLoader of batched inputs ({"text": [...], ...} per batch), in order."""
    return [text for batch in inputs for text in batch["text"]]


def _load(
    model: str | Path | Embedder | Ranker | None,
    revision: str | None,
    device: str | None,
    load_kwargs: dict[str, Any],
    want: type,
) -> Embedder | Ranker:
    """A loaded model as given, or embzoo.load(model, ...); refuses one of the other kind (embedder vs reranker)."""
    if isinstance(model, Embedder | Ranker):
        if revision is not None or device is not None or load_kwargs:
            raise ValueError(
                "load arguments (revision, device, ...) go with a model name or folder, not a loaded model"
            )
        loaded = model
    else:
        loaded = embzoo.load(model, revision=revision, device=device, **load_kwargs)
    if not isinstance(loaded, want):
        wrapper = "EmbzooCrossEncoder" if isinstance(loaded, Ranker) else "EmbzooEncoder"
        raise TypeError(
            f"{loaded.name or model} is a {type(loaded).__name__}: wrap it with {wrapper}, or let get_model choose"
        )
    return loaded


def _similarity(model: Embedder) -> str:
    """The checkpoint's similarity function (config_sentence_transformers.json), else sentence-transformers' cosine."""
    stated = model.origin.snapshot.pipeline.similarity_fn_name if model.origin is not None else None
    name = stated or "cosine"
    if name not in SIMILARITIES:
        raise ValueError(
            f"{model.name or 'this model'} compares vectors by {name!r}; the mteb wrapper scores {sorted(SIMILARITIES)}"
        )
    return name


def _check_sentence_output(model: Embedder) -> None:
    if model.model.outputs[0] != "sentence":
        raise ValueError(
            f"{model.name or 'this model'} gives {model.model.outputs[0]} vectors; the mteb wrapper runs sentence "
            "vectors (dense embedders) and rerankers, not ColBERT or SPLADE models"
        )


class EmbzooEncoder(AbsEncoder):
    """An embzoo Embedder as an mteb encoder: encode(DataLoader, task_metadata, prompt_type, ...) → float32 numpy
    [N, D] (another dtype with mteb's precision= encode argument), prompts chosen as the module docstring says.

    model: a hub id or folder (loaded with embzoo.load(model, revision=..., device=..., **load_kwargs)), an Embedder,
    or None for the bundled MiniLM. model_prompts: full prompts by mteb key (task names for a model with task
    adapters), for models without an instruction template; prompts_dict: task instructions by mteb key, for models
    with one. batch_tokens: tokens per packed batch.
    """

    def __init__(
        self,
        model: str | Path | Embedder | None = None,
        revision: str | None = None,
        *,
        device: str | None = None,
        model_prompts: dict[str, str] | None = None,
        prompts_dict: dict[str, str] | None = None,
        batch_tokens: int | None = None,
        **load_kwargs: Any,
    ):
        self.model = _load(model, revision, device, load_kwargs, Embedder)
        _check_sentence_output(self.model)
        self.similarity_fn_name = _similarity(self.model)
        self.instruction_template = self.model.instruction_template or None
        if self.instruction_template and model_prompts is not None:
            raise ValueError(
                f"{self.model.name} fills its instruction template with the task's instruction: pass instructions as "
                "prompts_dict={key: instruction}, not model_prompts"
            )
        if not self.instruction_template and prompts_dict is not None:
            raise ValueError(
                f"{self.model.name} has no instruction template: pass whole prompts as model_prompts={{key: prompt}}, "
                "not prompts_dict"
            )
        self.task_adapters = self.model.model.backbone.task_lora
        default = TASK_ADAPTERS if self.task_adapters is not None else self.model.prompts
        # every prompt (the model's, or model_prompts): where a query or document falls back to its role's prompt
        self.prompts = dict(default if model_prompts is None else model_prompts)
        if self.task_adapters is not None:
            for task in set(self.prompts.values()):
                self.task_adapters.index(task)
        if not self.instruction_template:
            self.model_prompts, _ = self.validate_task_to_prompt_name(self.prompts, raise_for_invalid_keys=False)
        self.prompts_dict = prompts_dict
        self.batch_tokens = batch_tokens
        options = {"model_prompts": model_prompts, "prompts_dict": prompts_dict, "batch_tokens": batch_tokens}
        loader_kwargs = load_kwargs | {k: v for k, v in options.items() if v is not None}
        self.mteb_model_meta = model_meta(model=self.model, revision=revision, loader_kwargs=loader_kwargs)

    def prompt_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """The prompt encode puts before each text of this task and prompt type; None: the model's default prompt
        (a model with task adapters takes task_for's task instead)."""
        if self.instruction_template and prompt_type != PromptType.document:
            return self.get_task_instruction(task_metadata, prompt_type)
        name = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
        if name is not None:
            return self.model_prompts[name]
        return next((self.prompts[n] for n in ROLE_PROMPTS.get(prompt_type, ()) if n in self.prompts), None)

    def task_for(self, task_metadata: TaskMetadata, prompt_type: PromptType | None) -> str | None:
        """A task-adapter model's task for this mteb task and prompt type (None: the base weights)."""
        name = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
        return None if name is None else self.model_prompts[name]

    def encode(
        self,
        inputs: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """[N, D] vectors of every text in inputs, in order: float32 numpy, or mteb's precision= (int8, binary, …)."""
        if self.task_adapters is not None:
            chosen = {"task": self.task_for(task_metadata, prompt_type)}
        else:
            chosen = {"prompt": self.prompt_for(task_metadata, prompt_type)}
        return self.model.encode(
            _texts(inputs),
            **chosen,
            precision=kwargs.get("precision") or "float32",
            batch_tokens=self.batch_tokens,
            show_progress_bar=kwargs.get("show_progress_bar"),
        )

    def similarity(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N1, N2] scores by the model's similarity function (cosine unless its files say dot)."""
        return SIMILARITIES[self.similarity_fn_name][0](embeddings1, embeddings2)

    def similarity_pairwise(self, embeddings1: Any, embeddings2: Any) -> torch.Tensor:
        """[N] scores of row i against row i, by the model's similarity function."""
        return SIMILARITIES[self.similarity_fn_name][1](embeddings1, embeddings2)


class EmbzooCrossEncoder:
    """An embzoo Reranker or ListwiseReranker as an mteb cross-encoder: predict(queries, documents DataLoaders)
    → float32 [N] scores of the pairs (queries[i], documents[i]), with the model's own activation and default
    instruction. A listwise reranker ranks each query's documents together (all of its pairs in one list).

    model: a hub id or folder (embzoo.load(model, revision=..., device=..., **load_kwargs)) or a loaded reranker.
    """

    def __init__(
        self,
        model: str | Path | Ranker,
        revision: str | None = None,
        *,
        device: str | None = None,
        batch_tokens: int | None = None,
        **load_kwargs: Any,
    ):
        self.model = _load(model, revision, device, load_kwargs, Ranker)
        self.batch_tokens = batch_tokens
        loader_kwargs = load_kwargs | ({} if batch_tokens is None else {"batch_tokens": batch_tokens})
        self.mteb_model_meta = model_meta(model=self.model, revision=revision, loader_kwargs=loader_kwargs)

    def predict(
        self,
        inputs1: DataLoader,
        inputs2: DataLoader,
        *,
        task_metadata: TaskMetadata,
        hf_split: str,
        hf_subset: str,
        prompt_type: PromptType | None = None,
        **kwargs: Any,
    ) -> np.ndarray:
        """float32 [N] scores of (query i, document i): inputs1 holds the queries, inputs2 the documents."""
        queries, documents = _texts(inputs1), _texts(inputs2)
        if len(queries) != len(documents):
            raise ValueError(f"predict pairs query i with document i; got {len(queries)} queries, {len(documents)}")
        return self.model.score(list(zip(queries, documents, strict=True)), batch_tokens=self.batch_tokens)


def _languages(entry: CatalogEntry) -> list[str] | None:
    """mteb's language codes for the catalog's, None for a multilingual model (its languages are not listed)."""
    codes = entry.languages.split(",")
    unknown = [c for c in codes if c not in LANGUAGES and c not in UNLISTED_LANGUAGES]
    if unknown:
        raise ValueError(f"{entry.hub_id}: no mteb code for catalog language(s) {unknown}; add them to LANGUAGES")
    return None if "multilingual" in codes else [LANGUAGES[c] for c in codes if c in LANGUAGES]


def _weights(module: torch.nn.Module) -> dict[str, Any]:
    """Parameter counts and size of the loaded weights (what embzoo runs: a dropped pooler or LM head is not counted),
    and the dtype vectors are computed in when it is not float32."""
    params = list(module.named_parameters())
    tokens = next(p for name, p in params if name.endswith("embed.tok.weight"))
    return {
        "n_parameters": sum(p.numel() for _, p in params),
        "n_embedding_parameters": tokens.numel(),
        "memory_usage_mb": round(sum(p.numel() * p.element_size() for _, p in params) / 2**20, 1),
        "output_dtypes": None if tokens.dtype == torch.float32 else OutputDType(str(tokens.dtype).split(".")[-1]),
    }


def _uses_instructions(entry: CatalogEntry | None, model: Embedder | Ranker | None) -> bool:
    """Whether inputs take prompts or instructions (mteb's use_instructions): the loaded model's, else the catalog's."""
    if isinstance(model, Embedder):
        return bool(model.instruction_template or any(model.prompts.values()) or model.task_instructions)
    if model is not None:
        return isinstance(model, ListwiseReranker) or (
            isinstance(model, Reranker) and model.inputs.default_instruction is not None
        )
    return bool(entry.instruction_template or any(entry.prompts.values()) or entry.task_instructions or entry.reranker)


def _meta_name(entry: CatalogEntry | None, model: Embedder | Ranker | None) -> str:
    """The catalog's hub id, else the name or folder the model was loaded from (a bare folder name made absolute:
    mteb wants "organization/model")."""
    if entry is not None:
        return entry.hub_id
    return model.name if "/" in model.name else str(Path(model.name).resolve())


def model_meta(
    name_or_entry: str | CatalogEntry | None = None,
    model: Embedder | Ranker | None = None,
    *,
    revision: str | None = None,
    loader_kwargs: dict[str, Any] | None = None,
) -> ModelMeta:
    """An mteb ModelMeta for a catalogued model (a hub id or CatalogEntry; None: the loaded model's recipe, or the
    bundled MiniLM), whose loader builds EmbzooEncoder or EmbzooCrossEncoder(name, revision, **loader_kwargs).

    From the catalog: name, license, languages, reference, and embed_dim, max_tokens, use_instructions when no model
    is given. With a loaded `model` (needed for an uncatalogued folder), its own dimension, token limit, prompts,
    similarity function, parameter counts, memory and compute dtype. What neither records (release date, training
    data and code, citation) is None, mteb's "unknown"; so is the similarity function without a model.
    """
    if isinstance(name_or_entry, CatalogEntry):
        entry = name_or_entry
    elif name_or_entry is None and model is not None:
        entry = catalog.lookup(model.origin.recipe) if model.origin is not None and model.origin.recipe else None
    else:
        entry = catalog.lookup(name_or_entry)
        if entry is None and model is None:
            raise ValueError(
                f"{name_or_entry!r} is not in the catalog (`embzoo list`): pass the loaded model, "
                "model_meta(model=embzoo.load(...)), or use get_model(name_or_folder)"
            )
    if model is None and kind(entry) in ("colbert", "splade"):
        raise ValueError(
            f"{entry.hub_id} is a {kind(entry)} model; the mteb wrapper runs dense embedders and rerankers"
        )
    reranker = isinstance(model, Ranker) if model is not None else is_reranker(entry)
    if isinstance(model, Embedder):
        _check_sentence_output(model)
    facts: dict[str, Any] = {"n_parameters": None, "memory_usage_mb": None}
    if model is not None:
        facts = _weights(model.scorer if reranker else model.model)
        facts["max_tokens"] = model.max_seq_length
        if not reranker:
            facts |= {"embed_dim": model.dimension, "similarity_fn_name": ScoringFunction(_similarity(model))}
    return ModelMeta(
        **{
            "loader": EmbzooCrossEncoder if reranker else EmbzooEncoder,
            "loader_kwargs": dict(loader_kwargs or {}),
            "name": _meta_name(entry, model),
            "revision": revision,
            "release_date": None,
            "languages": _languages(entry) if entry is not None else None,
            "embed_dim": None if reranker else entry.dimension if entry is not None else None,
            "max_tokens": entry.max_seq_length if entry is not None else None,
            "license": entry.license if entry is not None else None,
            "open_weights": True if entry is not None else None,
            "public_training_code": None,
            "public_training_data": None,
            "framework": ["PyTorch"],
            "reference": f"https://huggingface.co/{entry.hub_id}" if entry is not None else None,
            "similarity_fn_name": None,
            "use_instructions": _uses_instructions(entry, model),
            "training_datasets": None,
            "model_type": ["cross-encoder"] if reranker else ["dense"],
            **facts,
        }
    )


def get_model(
    name_or_path: str | Path | None = None,
    *,
    revision: str | None = None,
    device: str | None = None,
    batch_tokens: int | None = None,
    model_prompts: dict[str, str] | None = None,
    prompts_dict: dict[str, str] | None = None,
    **load_kwargs: Any,
) -> EmbzooEncoder | EmbzooCrossEncoder:
    """embzoo.load(name_or_path, revision=, device=, **load_kwargs) wrapped for mteb.evaluate: an EmbzooEncoder for an
    embedder (model_prompts / prompts_dict as EmbzooEncoder takes them), an EmbzooCrossEncoder for a reranker; its
    mteb_model_meta is model_meta(model=...) of the loaded model."""
    model = embzoo.load(name_or_path, revision=revision, device=device, **load_kwargs)
    if isinstance(model, Ranker):
        if model_prompts is not None or prompts_dict is not None:
            raise ValueError(f"{model.name} is a reranker: it takes no model_prompts or prompts_dict")
        wrapper = EmbzooCrossEncoder(model, batch_tokens=batch_tokens)
    else:
        wrapper = EmbzooEncoder(
            model, model_prompts=model_prompts, prompts_dict=prompts_dict, batch_tokens=batch_tokens
        )
    meta = wrapper.mteb_model_meta
    update = {"revision": revision, "loader_kwargs": load_kwargs | meta.loader_kwargs}
    wrapper.mteb_model_meta = meta.model_copy(update=update)
    return wrapper

"""Embedder.encode: prompts, tokenization, token-budget packing, batching, output formats."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embzoo.catalog import INSTRUCTION_MASKS
from embzoo.late_interaction import LateInteraction
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.embedding_model import EmbeddingModel
from embzoo.modeling.named_lora import NamedLoRA
from embzoo.packing import batch_tokens_for, token_budget_batches
from embzoo.quantization import PRECISIONS, calibration_ranges, quantize
from embzoo.reranker import as_pairs, ranked
from embzoo.scoring import dense_scores, maxsim_scores, sparse_scores
from embzoo.sparse_vectors import as_coo, sparse_output
from embzoo.tokenization import ModelInputs, TextTokenizer

OUTPUTS = ("sentence", "tokens", "sparse", "multivector")
SPARSE_FORMATS = ("dict", "torch", "scipy")
PROGRESS_MIN_TEXTS = 1024  # show_progress_bar=None shows a bar from this many texts on
TOKENIZE_CHUNK = 4096  # texts tokenized at once; the device works on one chunk while the next is tokenized


@dataclass(frozen=True)
class _Pass:
    """What one encode call computes: its outputs, token budget per batch, progress bar, sparse top-k and ColBERT
    role."""

    outputs: tuple[str, ...]
    batch_tokens: int
    show: bool
    top_k: int | None = None
    role: str | None = None


def _restore(parts: list[Any], positions: np.ndarray, count: int) -> Any:
    """Per-batch results (a [b, D] tensor each, or a list of b per-text items) in batch order → the caller's
    order; positions[k] is the caller's index of the k-th text in batch order."""
    if isinstance(parts[0], torch.Tensor):
        stacked = torch.cat(parts)
        result = torch.empty_like(stacked)
        result[torch.from_numpy(positions).to(stacked.device)] = stacked
        return result
    restored: list[Any] = [None] * count
    for pos, item in zip(positions.tolist(), (x for part in parts for x in part), strict=True):
        restored[pos] = item
    return restored


# the prompt names encode_query / encode_document use, the first the model has (sentence-transformers 5's lookup)
ROLE_PROMPTS = {"query": ("query",), "document": ("document", "passage", "corpus")}


class InputTooLong(ValueError):
    """An input longer than the model's token limit where truncation was refused (truncate=False)."""

    def __init__(self, index: int, length: int, limit: int):
        super().__init__(
            f"input {index} has {length} tokens, more than the model's limit of {limit}; shorten it or allow truncation"
        )
        self.index, self.length, self.limit = index, length, limit


def _as_texts(sentences: str | Sequence[str]) -> tuple[list[str], bool]:
    if isinstance(sentences, str):
        return [sentences], True
    texts = list(sentences)
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise TypeError(f"encode expects str or a list of str; item {i} is {type(t).__name__}: {t!r:.60}")
    return texts, False


class Embedder:
    """Text → vectors with one embedding checkpoint (load it with `embzoo.load`)."""

    origin: Any = None  # embzoo.load sets it: the snapshot and recipe it came from (embzoo.loading.Origin)

    def __init__(
        self,
        model: EmbeddingModel,
        tokenizer: TextTokenizer,
        *,
        normalize: bool = False,
        prompts: dict[str, str] | None = None,
        default_prompt_name: str | None = None,
        int8_ranges: np.ndarray | None = None,
        matryoshka_layer_norm: bool = False,
        instruction_template: str = "",
        instruction_mask: str = "prompt",
        text_suffix: str = "",
        task_instructions: dict[str, str] | None = None,
        name: str = "",
        adapters: NamedLoRA | None = None,
        late: LateInteraction | None = None,
        max_active_dims: int | None = None,
        truncate_dim: int | None = None,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.normalize = normalize
        self.prompts = dict(prompts or {})
        if default_prompt_name is not None and default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {default_prompt_name!r} is not among prompts {self.prompts}")
        self.default_prompt_name = default_prompt_name
        self.int8_ranges = int8_ranges
        self.matryoshka_layer_norm = matryoshka_layer_norm
        if instruction_template and "{instruction}" not in instruction_template:
            raise ValueError(f"instruction_template {instruction_template!r} lacks the {{instruction}} placeholder")
        self.instruction_template = instruction_template
        if instruction_mask not in INSTRUCTION_MASKS:
            raise ValueError(f"instruction_mask {instruction_mask!r}; allowed: {INSTRUCTION_MASKS}")
        self.instruction_mask = instruction_mask
        self.text_suffix = text_suffix
        self.task_instructions = dict(task_instructions or {})
        self.name = name
        self.adapters = adapters
        self.late = late
        self.max_active_dims = max_active_dims  # the sparse output's default top-k (None: all weights)
        if truncate_dim is not None and not ("sentence" in model.outputs and 1 <= truncate_dim <= model.dimension):
            raise ValueError(f"truncate_dim {truncate_dim} needs sentence vectors of at least that length")
        # the checkpoint's default cut (sentence-transformers' truncate_dim); settable
        self.truncate_dim = truncate_dim

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dimension(self) -> int:
        """Length of the main output's vectors as encode returns them by default: the sentence vector (cut to
        truncate_dim where the checkpoint sets one), a multi-vector token vector, or the vocabulary (sparse)."""
        return self.model.dimension if self.truncate_dim is None else self.truncate_dim

    @property
    def max_seq_length(self) -> int:
        """Inputs are truncated to this many tokens (special tokens included; a ColBERT model: documents)."""
        return self.late.roles["document"].length if self.late is not None else self.tokenizer.max_length

    def __repr__(self) -> str:
        return (
            f"Embedder({self.name!r}, dimension={self.dimension}, max_seq_length={self.max_seq_length}, "
            f"outputs={self.model.outputs}, pooling={self.model.pooler.name if self.model.pooler else None!r}, "
            f"normalize={self.normalize}, device={self.device})"
        )

    def _prompt(self, prompt_name: str | None, prompt: str | None, instruction: str | None) -> str:
        if sum(x is not None for x in (prompt_name, prompt, instruction)) > 1:
            raise ValueError("pass at most one of prompt, prompt_name and instruction")
        if instruction is not None:
            if not self.instruction_template:
                raise ValueError(
                    f"{self.name or 'this model'} takes no instruction (it has no instruction template); "
                    "pass prompt=... or prompt_name=... instead"
                )
            return self.instruction_template.format(instruction=instruction)
        if prompt is not None:
            return prompt
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name is None:
            return ""
        if name not in self.prompts:
            raise ValueError(
                f"unknown prompt_name {name!r}; this model's prompts are {sorted(self.prompts)} "
                "(or pass the text itself with prompt=...)"
            )
        return self.prompts[name]

    def encode(
        self,
        sentences: str | Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        instruction: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: str = "float32",
        int8_ranges: np.ndarray | None = None,
        batch_tokens: int | None = None,
        output: str | Sequence[str] | None = None,
        convert_to_tensor: bool = False,
        show_progress_bar: bool | None = None,
        task: str | Sequence[str] | None = None,
        adapter: str | Sequence[str | None] | None = None,
        max_active_dims: int | None = None,
        sparse_format: str | None = None,
        is_query: bool | None = None,
    ) -> Any:
        """Embed texts. Returns float32 [N, D] (or [D] for one str) as numpy, or a torch tensor on the
        model's device with convert_to_tensor; precision int8/uint8/binary/ubinary changes the dtype.

        output: "sentence" (the default where the model pools), "tokens" (per-text [len_i, hidden] token states),
        "multivector" (per-text [n_i, dim] L2-normalized token vectors: ColBERT, BGE-M3) or "sparse" (per-text
        {token id: weight} dicts; sparse_format "torch" = a torch sparse COO [N, vocab] tensor, the default with
        convert_to_tensor, "scipy" = a scipy CSR matrix). None = the model's main output (`outputs[0]`). A list
        of names gives a dict of them, all from one forward pass. Lists of per-text results hold one item for one str.
        max_active_dims keeps each sparse vector's heaviest weights (None: the model's setting, else all).

        The text is prefixed by `prompt`, the model's prompt `prompt_name`, or `instruction` (a task
        description put into the model's instruction template, e.g. Qwen3-Embedding's
        "Instruct: {instruction}\nQuery:"); with none of them, the default prompt if the model has one.
        A ColBERT model needs prompt_name "query" or "document" (or encode_query / encode_document): it marks
        the input as one or the other and pads queries with [MASK] (see embzoo.late_interaction). is_query (PyLate's
        spelling) is the same as encode_query (True) or encode_document (False).

        dimensions truncates (Matryoshka) before normalizing; normalize=None follows the model's
        Normalize module. Without dimensions, a checkpoint's truncate_dim (config_sentence_transformers.json) cuts
        the vectors as sentence-transformers does: after the Normalize module, not re-normalized unless
        normalize=True. int8/uint8 use int8_ranges ([2, D] min/max) or the stored ones (calibrate).
        batch_tokens: tokens per packed batch (None: 16384 on CUDA, 4096 elsewhere).

        task (task-LoRA models, jina-embeddings-v3): a task name, or one per text; each text runs with its task's
        adapter and is prefixed by its task's instruction (then pass no prompt). No task: the base weights, no
        instruction. A single-task call merges the adapter into the weights when memory allows (see
        embzoo.modeling.task_lora); mixed tasks run grouped by task, the adapter added per batch.

        adapter (a model loaded with adapters={name: folder}): an adapter name, or one per text (None in a list:
        the base weights); texts run grouped by adapter, its LoRA added per batch. No adapter: the base weights.
        """
        if is_query is not None:
            if prompt_name is not None:
                raise ValueError("pass is_query or prompt_name, not both")
            chosen = {"prompt": prompt, "instruction": instruction, "task": task}
            prompt_name = self._role_kwargs("query" if is_query else "document", chosen).get("prompt_name")
        texts, single = _as_texts(sentences)
        names = self._output_names(output)
        if max_active_dims is None and "sparse" in names:
            max_active_dims = self.max_active_dims
        tasks = self._tasks(task, len(texts), (prompt_name, prompt, instruction))
        adapters = self._adapters(adapter, len(texts))
        role = self._role(prompt_name, prompt, instruction)
        prefix = "" if tasks is not None or role is not None else self._prompt(prompt_name, prompt, instruction)
        self._check_output_args(names, dimensions, precision, max_active_dims)
        sparse_format = sparse_format or ("torch" if convert_to_tensor else "dict")
        if sparse_format not in SPARSE_FORMATS:
            raise ValueError(f"unknown sparse_format {sparse_format!r}; allowed: {SPARSE_FORMATS}")
        show = len(texts) >= PROGRESS_MIN_TEXTS if show_progress_bar is None else show_progress_bar
        run = _Pass(names, batch_tokens_for(self.device, batch_tokens), show, max_active_dims, role)
        results = self._run_groups(texts, tasks, adapters, prefix, run)
        out: dict[str, Any] = {}
        for name, value in results.items():
            if name == "sentence":
                value = self.finish_sentences(
                    value,
                    normalize=normalize,
                    dimensions=dimensions,
                    precision=precision,
                    int8_ranges=int8_ranges,
                    convert_to_tensor=convert_to_tensor,
                )
            elif name == "sparse":
                value = sparse_output(value, self.model.sparse.vocab_size, sparse_format, self.device)
            elif not convert_to_tensor:
                value = [v.cpu().numpy() for v in value]
            out[name] = value[0] if single else value
        return out[names[0]] if output is None or isinstance(output, str) else out

    def tokenize(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        instruction: str | None = None,
        task: str | None = None,
        truncate: bool = True,
    ) -> ModelInputs:
        """The inputs encode runs for the texts' sentence vectors (prompt + text + suffix as token ids, cut to
        max_seq_length, with the pool skips), for sentence_vectors, or for their sparse vectors; truncate=False raises
        InputTooLong for the first over-long text instead of cutting it. task: its instruction is the prompt (run them
        with the same task). A ColBERT model's inputs depend on their role: late.encode(texts, "query" | "document")
        gives them."""
        if self.late is not None:
            raise ValueError(
                f"{self.name or 'this ColBERT model'} tokenizes queries and documents differently: use "
                "late.encode(texts, 'query' | 'document'), or encode_query / encode_document"
            )
        texts, _ = _as_texts(texts)
        if task is None:
            prefix = self._prompt(prompt_name, prompt, instruction)
        else:
            self._tasks(task, len(texts), (prompt_name, prompt, instruction))
            prefix = self.task_instructions.get(task, "")
        inputs = self._inputs(texts, prefix, None)
        if inputs.truncated and not truncate:  # measure the texts that reached the limit, one by one, not the batch
            for i in (i for i, seq in enumerate(inputs.ids) if len(seq) >= self.max_seq_length):
                length = self.tokenizer.lengths(self._full_texts([texts[i]], prefix))[0]
                if length > self.max_seq_length:
                    raise InputTooLong(i, length, self.max_seq_length)
        return inputs

    def id_inputs(self, ids: Sequence[Sequence[int]], *, truncate: bool = True) -> ModelInputs:
        """Token-id sequences as inputs for sentence_vectors, run as given (no prompt, special or end token added)
        and cut to max_seq_length; truncate=False raises InputTooLong instead of cutting. Ids must be in the
        vocabulary, sequences non-empty."""
        self._output_names("sentence")
        vocab, limit = self.model.backbone.cfg.vocab_size, self.max_seq_length
        out = []
        for i, seq in enumerate(ids):
            seq = [int(t) for t in seq]
            if not seq:
                raise ValueError(f"token-id input {i} is empty; every input needs at least one token")
            bad = next((t for t in seq if not 0 <= t < vocab), None)
            if bad is not None:
                raise ValueError(f"token-id input {i} holds {bad}, outside the vocabulary 0..{vocab - 1}")
            if len(seq) > limit and not truncate:
                raise InputTooLong(i, len(seq), limit)
            out.append(seq[:limit])
        return ModelInputs(out, truncated=sum(len(s) > limit for s in ids))

    @torch.inference_mode()
    def sentence_vectors(
        self,
        inputs: ModelInputs,
        *,
        batch_tokens: int | None = None,
        task: str | None = None,
        adapter: str | None = None,
    ) -> torch.Tensor:
        """float32 [N, D] sentence vectors of tokenized inputs (tokenize, id_inputs), in order, before truncation
        and normalization (finish_sentences applies them); forwarded in length-sorted token-budget batches, with
        the task's adapter and the named adapter added per batch (None: the base weights)."""
        if not inputs.ids:
            return torch.zeros(0, self.model.dimension, device=self.device)
        self.check_weights(task, adapter)
        run = _Pass(("sentence",), batch_tokens_for(self.device, batch_tokens), show=False)
        batches = token_budget_batches([len(s) for s in inputs.ids], run.batch_tokens)
        with self._weights(task, adapter, alone=False):
            parts = [self._forward(inputs.select(idx), run)["sentence"] for idx in batches]
        return _restore(parts, np.concatenate(batches), len(inputs.ids))

    def to_sentence_transformer(self) -> Any:
        """This model as a sentence-transformers model running on embzoo: a SentenceTransformer (sentence vectors), a
        SparseEncoder (SPLADE) or a MultiVectorEncoder (ColBERT), with this model's prompts and settings and its
        weights shared (see embzoo.integrations.sentence_transformers; needs sentence-transformers>=6)."""
        from embzoo.integrations.sentence_transformers import sentence_transformer

        return sentence_transformer(self)

    def encode_query(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """encode with the model's "query" prompt (a ColBERT query: marker and [MASK] expansion), if it has one."""
        return self.encode(sentences, **self._role_kwargs("query", kwargs))

    def encode_document(self, sentences: str | Sequence[str], **kwargs: Any) -> Any:
        """encode with the model's document prompt, the first of "document", "passage" (e5) and "corpus" it has, as
        sentence-transformers 5's encode_document looks them up (version 6 gives every model an empty "document"
        prompt first); a ColBERT document: marker and skiplist."""
        return self.encode(sentences, **self._role_kwargs("document", kwargs))

    def _role_kwargs(self, role: str, kwargs: dict[str, Any]) -> dict[str, Any]:
        """kwargs with the role's prompt_name (ROLE_PROMPTS: the first the model has) where the caller chose none."""
        chosen = any(kwargs.get(k) is not None for k in ("prompt_name", "prompt", "instruction", "task"))
        if chosen:
            return kwargs
        if self.late is not None and role in self.late.roles:
            return {**kwargs, "prompt_name": role}
        name = next((n for n in ROLE_PROMPTS[role] if n in self.prompts), None)
        return kwargs if name is None else {**kwargs, "prompt_name": name}

    def score(
        self, pairs: Sequence[tuple[str, str]], *, output: str | None = None, batch_tokens: int | None = None
    ) -> np.ndarray:
        """float32 [N] retrieval scores of (query, document) pairs from one output: "sentence" (cosine),
        "sparse" (dot product) or "multivector" (MaxSim, summed over query tokens, BGE-M3: averaged); None = the
        main output. Queries are encoded as encode_query does, documents as encode_document (prompts, ColBERT roles)."""
        name = self._output_names(output)[0]
        if name == "tokens":
            raise ValueError("token states have no retrieval score; score with sentence, sparse or multivector outputs")
        return self._pair_scores(as_pairs(pairs), (name,), batch_tokens)[name]

    def rank(
        self,
        query: str,
        documents: Sequence[str],
        *,
        top_k: int | None = None,
        return_documents: bool = False,
        output: str | None = None,
        batch_tokens: int | None = None,
    ) -> list[dict[str, Any]]:
        """Documents sorted by score (see score), best first: [{"index", "score", ("document")}], top_k of them,
        as a Reranker's rank."""

        def score(pairs: list[tuple[str, str]]) -> np.ndarray:
            return self.score(pairs, output=output, batch_tokens=batch_tokens)

        return ranked(query, documents, score, top_k=top_k, return_documents=return_documents)

    def compute_score(
        self,
        sentence_pairs: Sequence[tuple[str, str]] | tuple[str, str],
        *,
        weights_for_different_modes: Sequence[float] = (1.0, 1.0, 1.0),
        batch_tokens: int | None = None,
    ) -> dict[str, np.ndarray] | dict[str, float]:
        """BGE-M3's hybrid scores of (query, document) pairs, float32 [N] each (floats for one pair): "dense",
        "sparse", "colbert" and the weighted means "sparse+dense" and "colbert+sparse+dense" with weights (dense,
        sparse, colbert), as FlagEmbedding's compute_score (same arguments and default weights). The ColBERT score
        is that of the encoded vectors (FlagEmbedding's compute_score also lets a longer document's padding floor
        each max at 0)."""
        names = ("sentence", "sparse", "multivector")
        if not set(names) <= set(self.model.outputs):
            raise ValueError(
                f"compute_score needs dense, sparse and multi-vector outputs; this model has {self.model.outputs}"
            )
        if len(weights_for_different_modes) != 3:
            raise ValueError(f"weights are (dense, sparse, colbert); got {len(weights_for_different_modes)} of them")
        single = len(sentence_pairs) == 2 and all(isinstance(x, str) for x in sentence_pairs)
        s = self._pair_scores(as_pairs([sentence_pairs] if single else sentence_pairs), names, batch_tokens)
        dense, sparse, colbert = s["sentence"], s["sparse"], s["multivector"]
        wd, ws, wc = (float(w) for w in weights_for_different_modes)
        scores = {
            "colbert": colbert,
            "sparse": sparse,
            "dense": dense,
            "sparse+dense": (sparse * ws + dense * wd) / (ws + wd),
            "colbert+sparse+dense": (colbert * wc + sparse * ws + dense * wd) / (wc + ws + wd),
        }
        return {k: float(v[0]) for k, v in scores.items()} if single else scores

    def _pair_scores(
        self, pairs: list[tuple[str, str]], names: tuple[str, ...], batch_tokens: int | None
    ) -> dict[str, np.ndarray]:
        """Each output's float32 [N] scores of the pairs; every distinct query and document is encoded once."""
        if not pairs:
            return {name: np.zeros(0, dtype=np.float32) for name in names}
        queries, documents = (list(dict.fromkeys(side)) for side in zip(*pairs, strict=True))
        kwargs = dict(output=list(names), convert_to_tensor=True, batch_tokens=batch_tokens)
        if "sentence" in names:
            kwargs["normalize"] = True  # cosine
        q = self.encode_query(queries, **kwargs)
        d = self.encode_document(documents, **kwargs)
        where_q, where_d = ({t: i for i, t in enumerate(side)} for side in (queries, documents))
        index = torch.tensor([[where_q[a], where_d[b]] for a, b in pairs], device=self.device)
        out = {}
        for name in names:
            if name == "sentence":
                got = dense_scores(q[name], d[name], pairs=index)
            elif name == "sparse":
                got = sparse_scores(q[name], d[name], pairs=index)
            else:
                got = maxsim_scores(q[name], d[name], reduce=self.model.multivector.reduce, pairs=index)
            out[name] = got.float().cpu().numpy()
        return out

    def decode(self, sparse: Any, top_k: int | None = None) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Sparse vectors (any form encode returns) as (token, weight) lists, heaviest first, top_k of each (None:
        all), as sentence-transformers' SparseEncoder.decode; one list for one dict or a 1-D tensor."""
        single = isinstance(sparse, dict) or (isinstance(sparse, torch.Tensor) and sparse.dim() == 1)
        coo = as_coo(sparse.unsqueeze(0) if isinstance(sparse, torch.Tensor) and single else sparse)
        rows, ids = coo.indices().cpu()
        weights = coo.values().cpu()
        out: list[list[tuple[str, float]]] = [[] for _ in range(coo.shape[0])]
        for row, token, weight in zip(rows.tolist(), ids.tolist(), weights.tolist(), strict=True):
            out[row].append((self.tokenizer.backend.id_to_token(token), weight))
        out = [sorted(r, key=lambda tw: -tw[1])[:top_k] for r in out]
        return out[0] if single else out

    def _output_names(self, output: str | Sequence[str] | None) -> tuple[str, ...]:
        names = (self.model.outputs[0],) if output is None else (output,) if isinstance(output, str) else tuple(output)
        bad = [n for n in names if n not in self.model.outputs]
        if bad or not names or len(set(names)) != len(names):
            raise ValueError(
                f"output {output!r}: {self.name or 'this model'} gives {self.model.outputs} "
                f"(pass one name, or a list of distinct names; known kinds: {OUTPUTS})"
            )
        return names

    def _role(self, prompt_name: str | None, prompt: str | None, instruction: str | None) -> str | None:
        """A ColBERT input's role ("query" or "document") from prompt_name; None for other models."""
        if self.late is None:
            return None
        name = prompt_name if prompt_name is not None else self.default_prompt_name
        if name not in self.late.roles or prompt is not None or instruction is not None:
            raise ValueError(
                f"{self.name or 'this ColBERT model'} encodes queries and documents differently: pass "
                f"prompt_name= one of {sorted(self.late.roles)} (or call encode_query / encode_document; on the "
                "command line, --prompt-name query|document)"
            )
        return name

    def finish_sentences(
        self,
        vectors: torch.Tensor,
        *,
        normalize: bool | None = None,
        dimensions: int | None = None,
        precision: str = "float32",
        int8_ranges: np.ndarray | None = None,
        convert_to_tensor: bool = False,
    ) -> Any:
        """Sentence vectors [N, D] (sentence_vectors) → truncated (Matryoshka), normalized, quantized, as numpy or
        a tensor, as encode returns them (same arguments)."""
        if dimensions is None and self.truncate_dim is not None:  # sentence-transformers' cut, after its Normalize
            if normalize is None and self.normalize:
                vectors = F.normalize(vectors, p=2, dim=-1)
            vectors, normalize = vectors[:, : self.truncate_dim], bool(normalize)
        elif dimensions is not None:
            if self.matryoshka_layer_norm:  # nomic-embed v1.5's recipe: layer norm, truncate, normalize
                vectors = F.layer_norm(vectors, (vectors.shape[-1],))
            vectors = vectors[:, :dimensions]
        if self.normalize if normalize is None else normalize:
            vectors = F.normalize(vectors, p=2, dim=-1)
        if precision != "float32":
            ranges = int8_ranges if int8_ranges is not None else self.int8_ranges
            vectors = quantize(vectors.cpu().numpy(), precision, ranges)
            return torch.from_numpy(vectors).to(self.device) if convert_to_tensor else vectors
        return vectors if convert_to_tensor else vectors.cpu().numpy()

    def _tasks(self, task: str | Sequence[str] | None, count: int, prompts: tuple) -> list[str] | None:
        """One task name per text (None without a task), checked against the model's adapters."""
        if task is None:
            return None
        lora = self.model.backbone.task_lora
        if lora is None:
            raise ValueError(f"{self.name or 'this model'} has no task adapters; leave task out")
        if any(p is not None for p in prompts):
            raise ValueError("task= sets the prompt (its instruction); pass no prompt, prompt_name or instruction")
        tasks = [task] * count if isinstance(task, str) else list(task)
        if len(tasks) != count:
            raise ValueError(f"task= has {len(tasks)} names for {count} texts; pass one task, or one per text")
        for name in dict.fromkeys(tasks):
            lora.index(name)
        return tasks

    def _adapters(self, adapter: str | Sequence[str | None] | None, count: int) -> list[str | None] | None:
        """One adapter name (or None: base weights) per text, None without adapter=; checked against the loaded
        adapters."""
        if adapter is None:
            return None
        if self.adapters is None:
            raise ValueError(
                f"{self.name or 'this model'} has no named adapters; load it with adapters={{name: folder}} to "
                "select one per call"
            )
        names = [adapter] * count if isinstance(adapter, str) else list(adapter)
        if len(names) != count:
            raise ValueError(f"adapter= has {len(names)} names for {count} texts; pass one adapter, or one per text")
        for name in dict.fromkeys(names):
            if name is not None:
                self.adapters.check(name)
        return names

    def check_weights(self, task: str | None, adapter: str | None) -> None:
        """ValueError unless task names one of the model's task adapters and adapter one of its named adapters
        (None: not asked for)."""
        if task is not None:
            self._tasks(task, 1, ())
        if adapter is not None:
            self._adapters(adapter, 1)

    def merge_adapter(self, name: str) -> None:
        """Merge the named adapter into the weights for good: it becomes the base weights every later call
        (with or without another adapter) runs on, and is no longer selectable."""
        if self.adapters is None:
            raise ValueError(f"{self.name or 'this model'} has no named adapters to merge")
        self.adapters.merge(name)

    @contextmanager
    def _weights(self, task: str | None, adapter: str | None, alone: bool) -> Iterator[None]:
        """Run with task's adapter (merged into the weights when `alone` and memory allows) and the named
        adapter (added per batch); None: neither."""
        with ExitStack() as stack:
            if task is not None:
                lora = self.model.backbone.task_lora
                stack.enter_context(lora.merged(task) if alone and lora.can_merge() else lora.active(task))
            if adapter is not None:
                stack.enter_context(self.adapters.active(adapter))
            yield

    def _run_groups(
        self, texts: list[str], tasks: list[str] | None, adapters: list[str | None] | None, prefix: str, run: _Pass
    ) -> dict[str, Any]:
        """_run, with each text's task adapter and instruction and its named adapter: texts grouped by (task,
        adapter), one group at a time, results in the caller's order."""
        keys = zip(tasks or [None] * len(texts), adapters or [None] * len(texts), strict=True)
        groups: dict[tuple[str | None, str | None], list[int]] = {}
        for i, key in enumerate(keys):
            groups.setdefault(key, []).append(i)
        if len(groups) <= 1:  # no reordering: the whole call in one run
            task, adapter = next(iter(groups), (None, None))
            with self._weights(task, adapter, alone=True):
                return self._run(texts, prefix if task is None else self.task_instructions.get(task, ""), run)
        parts = []
        for (task, adapter), idx in groups.items():
            with self._weights(task, adapter, alone=False):
                instruction = prefix if task is None else self.task_instructions.get(task, "")
                parts.append((idx, self._run([texts[i] for i in idx], instruction, run)))
        order = np.concatenate([idx for idx, _ in parts])
        return {name: _restore([p[name] for _, p in parts], order, len(texts)) for name in run.outputs}

    def _check_output_args(
        self, names: tuple[str, ...], dimensions: int | None, precision: str, max_active_dims: int | None
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; allowed: {PRECISIONS}")
        if "sentence" not in names and (dimensions is not None or precision != "float32"):
            raise ValueError("dimensions and precision apply to the sentence output only")
        if dimensions is not None and not 1 <= dimensions <= self.model.dimension:
            raise ValueError(f"dimensions must be in 1..{self.model.dimension}, got {dimensions}")
        if max_active_dims is not None and ("sparse" not in names or max_active_dims < 1):
            raise ValueError(f"max_active_dims (a positive count) applies to the sparse output; got {max_active_dims}")

    def _pool_skips(self, texts: list[str], prefix: str, ids: list[list[int]]) -> np.ndarray | None:
        """Leading tokens of each sequence kept out of the pool (see catalog.CatalogEntry.instruction_mask),
        or None when every token is pooled. "text_tokens" applies with or without a prompt (a leading BOS
        is not a text token)."""
        if self.model.pooler is None or self.model.pooler.include_prompt:
            return None
        if self.instruction_mask == "text_tokens":
            counts = np.asarray(self.tokenizer.token_counts([t + self.text_suffix for t in texts]))
            return np.maximum(np.asarray([len(s) for s in ids]) - counts, 0)
        if not prefix:
            return None
        if self.instruction_mask == "prompt_tokens":
            skip = self.tokenizer.token_counts([prefix])[0]
        else:
            skip = self.tokenizer.prompt_length(prefix)
        return np.full(len(ids), skip)

    def _full_texts(self, texts: list[str], prefix: str) -> list[str]:
        """The strings tokenized for the texts: prefix + text + the model's text suffix."""
        return [prefix + t + self.text_suffix for t in texts]

    def _inputs(self, texts: list[str], prefix: str, role: str | None) -> ModelInputs:
        """Token ids of prefix + text + text_suffix (a ColBERT role's marked inputs instead), with what the
        batches need besides."""
        if role is not None:
            return self.late.encode(texts, role)
        ids, cut = self.tokenizer.encode(self._full_texts(texts, prefix))
        if empty := [t for t, seq in zip(texts, ids, strict=True) if not seq]:
            raise ValueError(
                f"{len(empty)} text(s) give no tokens, e.g. {empty[0]!r}: this model's tokenizer adds no special "
                "tokens, so an empty text has nothing to embed; drop or replace such texts"
            )
        return ModelInputs(ids, cut, skips=self._pool_skips(texts, prefix, ids))

    @torch.inference_mode()
    def _run(self, texts: list[str], prefix: str, run: _Pass) -> dict[str, Any]:
        """Tokenize chunk by chunk; forward each chunk in length-sorted token-budget batches; the outputs in the
        caller's order (sentence: [N, D]; the others: one item per text).

        GPU work is queued asynchronously, so the next chunk is tokenized while the device computes; sentence,
        token and multi-vector outputs sync the host once, at the final reorder (sparse outputs once per batch:
        their sizes are data).
        """
        parts: list[dict[str, Any]] = []
        order: list[np.ndarray] = []
        truncated = 0
        with tqdm(total=len(texts), disable=not run.show, desc="embzoo encode", unit="text") as bar:
            for start in range(0, len(texts), TOKENIZE_CHUNK):
                inputs = self._inputs(texts[start : start + TOKENIZE_CHUNK], prefix, run.role)
                truncated += inputs.truncated
                for idx in token_budget_batches([len(s) for s in inputs.ids], run.batch_tokens):
                    parts.append(self._forward(inputs.select(idx), run))
                    order.append(idx + start)
                    bar.update(len(idx))
        if run.role is not None:
            self.late.warn_truncated(truncated, len(texts), run.role)
        else:
            self.tokenizer.warn_truncated(truncated, len(texts))
        if not texts:
            return {
                n: torch.zeros(0, self.model.dimension, device=self.device) if n == "sentence" else []
                for n in run.outputs
            }
        positions = np.concatenate(order)
        return {name: _restore([p[name] for p in parts], positions, len(texts)) for name in run.outputs}

    def _forward(self, inputs: ModelInputs, run: _Pass) -> dict[str, Any]:
        """One packed batch → its outputs: sentence [B, D]; tokens, multivector and sparse one item per text."""
        device = self.device
        batch = PackedBatch.from_sequences(inputs.ids, key_lengths=inputs.key_lengths).to(device)
        prompt_lengths = None if inputs.skips is None else torch.from_numpy(inputs.skips.astype(np.int32)).to(device)
        rows = counts = None
        if "multivector" in run.outputs:
            rows, counts = self.model.multivector.rows([len(s) for s in inputs.ids], inputs.keep)
            rows = torch.from_numpy(rows).to(device)
        out = self.model.run(batch, run.outputs, prompt_lengths=prompt_lengths, rows=rows, top_k=run.top_k)
        if "tokens" in out:
            out["tokens"] = list(out["tokens"].split([len(s) for s in inputs.ids]))
        if "multivector" in out:
            out["multivector"] = list(out["multivector"].split(counts))
        if "sparse" in out:
            out["sparse"] = out["sparse"].rows()
        return out

    def calibrate(
        self,
        texts: Sequence[str],
        *,
        prompt_name: str | None = None,
        prompt: str | None = None,
        instruction: str | None = None,
        normalize: bool | None = None,
        dimensions: int | None = None,
        batch_tokens: int | None = None,
    ) -> np.ndarray:
        """Compute and store int8/uint8 ranges ([2, D] min/max) from representative texts, encoded with
        the same prompt/dimensions/normalize arguments you will use for quantized encoding."""
        vectors = self.encode(
            list(texts),
            output="sentence",
            prompt_name=prompt_name,
            prompt=prompt,
            instruction=instruction,
            normalize=normalize,
            dimensions=dimensions,
            batch_tokens=batch_tokens,
        )
        self.int8_ranges = calibration_ranges(vectors)
        return self.int8_ranges

"""LangChain adapters (`pip install 'embzoo[langchain]'`): EmbzooEmbeddings, an `Embeddings` that encodes documents
and queries with the model's document and query prompts (Embedder.encode_document / encode_query), and EmbzooRerank,
a document compressor that orders retrieved Documents by an embzoo reranker's (or an embedder's) rank().

The knobs are langchain-huggingface's HuggingFaceEmbeddings': model_name (alias model; a Hub id or a local folder,
None: the bundled MiniLM), model_kwargs (embzoo.load's: device, dtype, max_seq_length, recipe, ...), encode_kwargs
(Embedder.encode's: normalize, dimensions, prompt_name, batch_tokens, ...; sentence-transformers' normalize_embeddings
is read as normalize), query_encode_kwargs (used for queries instead of encode_kwargs when not empty), show_progress.
client takes an already loaded model instead of model_name. Texts are encoded as given (HuggingFaceEmbeddings
replaces newlines by spaces). The async methods are LangChain's: the sync call on an executor thread, so the event
loop keeps running; calls on one model take turns (embzoo.integrations.wrapped).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, field_validator

from embzoo.api import Embedder
from embzoo.integrations.wrapped import check_options, model_lock, wrapped_model

SET_BY_ADAPTER = ("sentences", "output", "convert_to_tensor", "show_progress_bar", "is_query")


class EmbzooEmbeddings(BaseModel, Embeddings):
    """An embzoo embedder as LangChain Embeddings: vectors are lists of floats, [D] per text."""

    model_name: str | None = Field(default=None, alias="model")
    """Hub id or local folder to load; None: the bundled all-MiniLM-L6-v2."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """embzoo.load keyword arguments: device, dtype, max_seq_length, recipe, attn_backend, ..."""
    encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Embedder.encode keyword arguments for documents (and queries without query_encode_kwargs)."""
    query_encode_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Embedder.encode keyword arguments for queries; empty: encode_kwargs."""
    show_progress: bool = False
    """Show a progress bar while encoding."""
    client: Any = Field(default=None, exclude=True)
    """The embzoo Embedder; give a loaded one instead of model_name, else it is loaded."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), populate_by_name=True, arbitrary_types_allowed=True
    )

    @field_validator("encode_kwargs", "query_encode_kwargs")
    @classmethod
    def _encode_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        """Options as Embedder.encode takes them: normalize_embeddings renamed normalize, unknown keys refused."""
        options = dict(options)
        if "normalize_embeddings" in options:
            if "normalize" in options:
                raise ValueError("pass normalize or normalize_embeddings (its sentence-transformers name), not both")
            options["normalize"] = options.pop("normalize_embeddings")
        check_options(Embedder.encode, options, SET_BY_ADAPTER, "encode kwargs")
        return options

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.client = wrapped_model(self.client, self.model_name, self.model_kwargs, "EmbzooEmbeddings", rankers=False)

    def _encode(self, texts: str | list[str], query: bool) -> list[Any]:
        options = (self.query_encode_kwargs or self.encode_kwargs) if query else self.encode_kwargs
        encode = self.client.encode_query if query else self.client.encode_document
        with model_lock(self.client):
            return encode(texts, output="sentence", show_progress_bar=self.show_progress, **options).tolist()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """The documents' vectors, in order, with the model's document prompt (unless encode_kwargs sets one)."""
        return self._encode(list(texts), query=False)

    def embed_query(self, text: str) -> list[float]:
        """The query's vector, with the model's query prompt (unless the encode kwargs set one)."""
        return self._encode(text, query=True)


class EmbzooRerank(BaseDocumentCompressor):
    """Documents ordered by an embzoo model's rank(query, texts), best first, top_n of them; each is a copy with
    metadata["relevance_score"] (the rank score: a reranker's probability or logit, an embedder's cosine)."""

    model_name: str | None = Field(default=None, alias="model")
    """Hub id or local folder to load (a reranker or an embedder); None: the bundled all-MiniLM-L6-v2."""
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """embzoo.load keyword arguments: device, dtype, max_seq_length, recipe, ..."""
    top_n: int | None = Field(default=3, ge=1)
    """Number of documents to return; None: all of them."""
    rank_kwargs: dict[str, Any] = Field(default_factory=dict)
    """The model's rank() keyword arguments: instruction, activation, batch_tokens (rerankers), output (embedders)."""
    client: Any = Field(default=None, exclude=True)
    """The embzoo Reranker, ListwiseReranker or Embedder; give a loaded one instead of model_name, else it is loaded."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), populate_by_name=True, arbitrary_types_allowed=True
    )

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.client = wrapped_model(self.client, self.model_name, self.model_kwargs, "EmbzooRerank", rankers=True)
        check_options(
            self.client.rank, self.rank_kwargs, ("query", "documents", "top_k", "return_documents"), "rank_kwargs"
        )

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        """The top_n documents by relevance to query, best first, with metadata["relevance_score"]."""
        if not documents:
            return []
        texts = [d.page_content for d in documents]
        with model_lock(self.client):
            rows = self.client.rank(query, texts, top_k=self.top_n, **self.rank_kwargs)
        return [
            documents[r["index"]].model_copy(
                update={"metadata": {**documents[r["index"]].metadata, "relevance_score": r["score"]}}
            )
            for r in rows
        ]

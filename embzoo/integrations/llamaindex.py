"""LlamaIndex adapters (`pip install 'embzoo[llamaindex]'`): EmbzooEmbedding, a `BaseEmbedding` that encodes
queries and texts with the model's query and document prompts (Embedder.encode_query / encode_document), and
EmbzooRerank, a node postprocessor that rescores retrieved nodes with an embzoo reranker's (or an embedder's) rank().

The knobs are llama-index-embeddings-huggingface's HuggingFaceEmbedding' where they mean the same: model_name (a Hub
id or a local folder, None: the bundled MiniLM), query_instruction / text_instruction (the text put before each query
/ text; None: the model's own query / document prompt), normalize, embed_batch_size (texts per model call; embzoo
packs each call's texts into token-budget batches, so a large value costs no padding), show_progress_bar; and
SentenceTransformerRerank's: top_n, keep_retrieval_score. model_kwargs are embzoo.load's (device, dtype, ...); client
takes an already loaded model instead of model_name. Async calls run the sync ones on a thread (asyncio.to_thread),
so the event loop keeps running; calls on one model take turns (embzoo.integrations.wrapped).
"""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from embzoo.integrations.wrapped import check_options, model_lock, wrapped_model


class EmbzooEmbedding(BaseEmbedding):
    """An embzoo embedder as a LlamaIndex embedding model: vectors are lists of floats, [D] per text."""

    model_name: str | None = Field(
        default=None, description="Hub id or local folder to load; None: the bundled all-MiniLM-L6-v2."
    )
    model_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="embzoo.load keyword arguments: device, dtype, max_seq_length, recipe, ..."
    )
    embed_batch_size: int = Field(default=1024, gt=0, le=2048, description="Texts per model call.")
    query_instruction: str | None = Field(
        default=None, description="Text put before each query; None: the model's query prompt."
    )
    text_instruction: str | None = Field(
        default=None, description="Text put before each text; None: the model's document prompt."
    )
    normalize: bool | None = Field(
        default=None, description="L2-normalize the vectors; None: as the model does (its Normalize module)."
    )
    dimensions: int | None = Field(default=None, gt=0, description="Matryoshka truncation; None: the full vector.")
    batch_tokens: int | None = Field(default=None, gt=0, description="Tokens per packed batch; None: embzoo's default.")
    show_progress_bar: bool = Field(default=False, description="Show a progress bar while encoding.")
    client: Any = Field(default=None, exclude=True, description="The embzoo Embedder (loaded from model_name if None).")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.client = wrapped_model(self.client, self.model_name, self.model_kwargs, "EmbzooEmbedding", rankers=False)

    @classmethod
    def class_name(cls) -> str:
        return "EmbzooEmbedding"

    def _encode(self, texts: list[str], query: bool) -> list[Embedding]:
        encode = self.client.encode_query if query else self.client.encode_document
        with model_lock(self.client):
            vectors = encode(
                texts,
                prompt=self.query_instruction if query else self.text_instruction,
                normalize=self.normalize,
                dimensions=self.dimensions,
                batch_tokens=self.batch_tokens,
                output="sentence",
                show_progress_bar=self.show_progress_bar,
            )
        return vectors.tolist()

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encode([query], query=True)[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encode([text], query=False)[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encode(texts, query=False)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)


class EmbzooRerank(BaseNodePostprocessor):
    """Nodes rescored by an embzoo model's rank(query, contents) and sorted best first, top_n of them; a node's
    score becomes the rank score (a reranker's probability or logit, an embedder's cosine). Contents are the nodes'
    text with their embedding metadata, as SentenceTransformerRerank reads them."""

    model_name: str | None = Field(
        default=None, description="Hub id or local folder to load (a reranker or an embedder); None: bundled MiniLM."
    )
    model_kwargs: dict[str, Any] = Field(default_factory=dict, description="embzoo.load keyword arguments.")
    top_n: int | None = Field(default=2, ge=1, description="Nodes to return; None: all of them.")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep each node's previous score in its metadata['retrieval_score']."
    )
    rank_kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="The model's rank() keyword arguments: instruction, activation, batch_tokens, output (embedders).",
    )
    client: Any = Field(default=None, exclude=True, description="The embzoo model (loaded from model_name if None).")

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.client = wrapped_model(self.client, self.model_name, self.model_kwargs, "EmbzooRerank", rankers=True)
        check_options(
            self.client.rank, self.rank_kwargs, ("query", "documents", "top_k", "return_documents"), "rank_kwargs"
        )

    @classmethod
    def class_name(cls) -> str:
        return "EmbzooRerank"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("EmbzooRerank needs the query: pass query_str= or query_bundle= to postprocess_nodes")
        if not nodes:
            return []
        contents = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        payload = {
            EventPayload.NODES: nodes,
            EventPayload.MODEL_NAME: self.client.name,
            EventPayload.QUERY_STR: query_bundle.query_str,
            EventPayload.TOP_K: self.top_n,
        }
        with self.callback_manager.event(CBEventType.RERANKING, payload=payload) as event:
            with model_lock(self.client):
                rows = self.client.rank(query_bundle.query_str, contents, top_k=self.top_n, **self.rank_kwargs)
            if self.keep_retrieval_score:
                for n in nodes:
                    n.node.metadata["retrieval_score"] = n.score
            ranked = [NodeWithScore(node=nodes[r["index"]].node, score=r["score"]) for r in rows]
            event.on_end(payload={EventPayload.NODES: ranked})
        return ranked

"""Ray Data (`pip install 'embzoo[ray]'`): embed_dataset adds a column of sentence vectors to a Ray Dataset, and
score_dataset a column of (query, document) scores, on a fixed pool of actors that each load the model once (one per
GPU with num_gpus_per_worker=1, on CUDA; else on the CPU). Each actor call gets `batch_size` rows and encodes them as
Embedder.encode does: length-sorted token-budget batches, results in the rows' order, the other columns kept.

The same code runs on one machine or a cluster: ray.init() starts a local Ray, ray.init(address="ray://head:10001")
(or RAY_ADDRESS) joins one; every node needs the model (a Hub id, or a folder at the same path on each node). Ray
Data may hand blocks on out of order unless DataContext.get_current().execution_options.preserve_order is True; a
row's columns always stay together. Ray Data's read tasks need CPUs besides the actors': a pool holding every CPU of a
CPU-only cluster waits for them forever (give the workers fewer, e.g. num_cpus_per_worker=0.5).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import ray
from ray.data import ActorPoolStrategy, Dataset

from embzoo.loading import load


def _column(batch: dict[str, np.ndarray], name: str) -> list[str]:
    """The column's texts; ValueError for a missing column or a value that is not a string (a null is not "None")."""
    if name not in batch:
        raise ValueError(f"the dataset has no column {name!r}; its columns are {sorted(batch)}")
    texts = list(batch[name])
    bad = [x for x in texts if not isinstance(x, str)]
    if bad:
        raise ValueError(
            f"column {name!r} holds {bad[0]!r} ({type(bad[0]).__name__}), not a string: drop or fill such rows first "
            "(ds.filter / ds.map)"
        )
    return texts


def _with_budget(options: Mapping[str, Any] | None, batch_tokens: int | None) -> dict[str, Any]:
    options = dict(options or {})
    if "batch_tokens" in options:
        raise ValueError("pass batch_tokens as embed_dataset's / score_dataset's own argument, not among the kwargs")
    return {**options, "batch_tokens": batch_tokens}


def _load(model: str, load_kwargs: Mapping[str, Any]) -> Any:
    """embzoo.load in an actor: on CUDA when Ray gave the actor a GPU, else on the CPU (unless load_kwargs say)."""
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    return load(model, **{"device": device, **load_kwargs})


class EmbedBatches:
    """Ray Data callable class: loads the embedder once per actor; a batch {column: array} gets output_column, the
    texts' vectors (float32 [N, D] for sentence vectors; encode_kwargs go to Embedder.encode)."""

    def __init__(
        self,
        model: str,
        text_column: str,
        output_column: str,
        load_kwargs: Mapping[str, Any],
        encode_kwargs: Mapping[str, Any],
    ):
        self.embedder = _load(model, load_kwargs)
        self.text_column, self.output_column, self.encode_kwargs = text_column, output_column, dict(encode_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        texts = _column(batch, self.text_column)
        return {**batch, self.output_column: self.embedder.encode(texts, **self.encode_kwargs)}


class ScoreBatches:
    """Ray Data callable class: loads the reranker (or embedder) once per actor; a batch gets output_column, float32
    [N] scores of its (query_column, document_column) pairs (score_kwargs go to the model's score())."""

    def __init__(
        self,
        model: str,
        query_column: str,
        document_column: str,
        output_column: str,
        load_kwargs: Mapping[str, Any],
        score_kwargs: Mapping[str, Any],
    ):
        self.scorer = _load(model, load_kwargs)
        self.columns = (query_column, document_column)
        self.output_column, self.score_kwargs = output_column, dict(score_kwargs)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        pairs = list(zip(*(_column(batch, c) for c in self.columns), strict=True))
        return {**batch, self.output_column: self.scorer.score(pairs, **self.score_kwargs)}


def _map(
    ds: Dataset,
    fn: type,
    constructor_kwargs: dict[str, Any],
    num_workers: int,
    num_cpus_per_worker: float | None,
    num_gpus_per_worker: float,
    batch_size: int,
) -> Dataset:
    """ds.map_batches(fn) on a fixed pool of num_workers actors, batch_size rows per call."""
    if num_workers < 1 or batch_size < 1:
        raise ValueError(f"num_workers and batch_size must be positive; got {num_workers} and {batch_size}")
    return ds.map_batches(
        fn,
        fn_constructor_kwargs=constructor_kwargs,
        compute=ActorPoolStrategy(size=num_workers),
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=num_cpus_per_worker,
        num_gpus=num_gpus_per_worker,
        udf_modifying_row_count=False,
    )


def embed_dataset(
    ds: Dataset,
    model: str,
    *,
    text_column: str = "text",
    output_column: str = "embedding",
    num_workers: int = 1,
    num_cpus_per_worker: float | None = None,
    num_gpus_per_worker: float = 0,
    batch_size: int = 1024,
    batch_tokens: int | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    encode_kwargs: Mapping[str, Any] | None = None,
) -> Dataset:
    """ds with output_column: each row's text_column embedded by model (a Hub id or a folder every node can read).
    num_workers actors each load the model (num_gpus_per_worker GPUs each, on CUDA when > 0; num_cpus_per_worker CPUs
    each, None: Ray's default); an actor call takes batch_size rows, packed into batches of batch_tokens tokens (None:
    embzoo's default for the device).
    load_kwargs go to embzoo.load (dtype, max_seq_length, recipe, ...), encode_kwargs to Embedder.encode (prompt_name,
    normalize, dimensions, precision, ...). Lazy, as every Ray Data transform."""
    return _map(
        ds,
        EmbedBatches,
        dict(
            model=model,
            text_column=text_column,
            output_column=output_column,
            load_kwargs=dict(load_kwargs or {}),
            encode_kwargs=_with_budget(encode_kwargs, batch_tokens),
        ),
        num_workers,
        num_cpus_per_worker,
        num_gpus_per_worker,
        batch_size,
    )


def score_dataset(
    ds: Dataset,
    model: str,
    *,
    query_column: str = "query",
    document_column: str = "document",
    output_column: str = "score",
    num_workers: int = 1,
    num_cpus_per_worker: float | None = None,
    num_gpus_per_worker: float = 0,
    batch_size: int = 1024,
    batch_tokens: int | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    score_kwargs: Mapping[str, Any] | None = None,
) -> Dataset:
    """ds with output_column: float32 scores of each row's (query_column, document_column) pair by model (a reranker,
    or an embedder's score), on an actor pool as embed_dataset's; score_kwargs go to the model's score() (instruction,
    activation, output, ...)."""
    return _map(
        ds,
        ScoreBatches,
        dict(
            model=model,
            query_column=query_column,
            document_column=document_column,
            output_column=output_column,
            load_kwargs=dict(load_kwargs or {}),
            score_kwargs=_with_budget(score_kwargs, batch_tokens),
        ),
        num_workers,
        num_cpus_per_worker,
        num_gpus_per_worker,
        batch_size,
    )

"""What the LangChain and LlamaIndex adapters share: the embzoo model an adapter wraps (one given, or loaded from a
name), a check of the options it passes on, and one lock per model. Every adapter call holds its model's lock: the
frameworks run async calls on executor threads, and a model runs one call at a time (task and named LoRA adapters
change its weights during a call).
"""

from __future__ import annotations

import inspect
import threading
import weakref
from collections.abc import Callable, Collection, Mapping
from typing import Any

from embzoo.api import Embedder
from embzoo.loading import load
from embzoo.reranker import Ranker

_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_GUARD = threading.Lock()


def model_lock(model: Embedder | Ranker) -> threading.Lock:
    """The one lock of this model object, shared by every adapter that wraps it."""
    with _GUARD:
        return _LOCKS.setdefault(model, threading.Lock())


def wrapped_model(
    client: Any, model_name: str | None, model_kwargs: Mapping[str, Any], owner: str, *, rankers: bool
) -> Embedder | Ranker:
    """client as given, else embzoo.load(model_name, **model_kwargs) (None: the bundled MiniLM). An embedder must give
    sentence vectors; rankers=True also takes a Reranker or ListwiseReranker."""
    if client is not None and (model_name is not None or model_kwargs):
        raise ValueError(f"{owner}: pass client (a loaded embzoo model) or model_name and model_kwargs, not both")
    model = client if client is not None else load(model_name, **model_kwargs)
    kinds = (Embedder, Ranker) if rankers else (Embedder,)
    if not isinstance(model, kinds):
        wanted = "an embzoo Embedder, Reranker or ListwiseReranker" if rankers else "an embzoo Embedder"
        raise TypeError(f"{owner} wraps {wanted}; got {type(model).__name__}")
    if isinstance(model, Embedder) and "sentence" not in model.model.outputs:
        raise ValueError(
            f"{owner} needs sentence vectors; {model.name or 'this model'} gives {model.model.outputs} (a ColBERT or "
            "SPLADE model: use Embedder.encode and embzoo.scoring directly)"
        )
    return model


def check_options(fn: Callable[..., Any], options: Mapping[str, Any], taken: Collection[str], where: str) -> None:
    """Raise ValueError naming the options fn does not take by keyword, or that the adapter sets itself (taken)."""
    accepted = {
        name
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }
    allowed = sorted(accepted - set(taken) - {"self"})
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        hint = "; embzoo batches by tokens: pass batch_tokens" if "batch_size" in unknown else ""
        raise ValueError(f"{where}: {unknown} not accepted; allowed: {allowed}{hint}")

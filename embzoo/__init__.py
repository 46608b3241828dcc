"""embzoo: text-embedding models on packed token streams.

import embzoo
m = embzoo.load()                       # bundled all-MiniLM-L6-v2; or a hub id / local folder
v = m.encode(["what is rope?"], normalize=True)
"""

from embzoo import catalog
from embzoo.api import Embedder
from embzoo.config import ArchConfig, UnsupportedConfig
from embzoo.loading import load

__all__ = ["ArchConfig", "Embedder", "UnsupportedConfig", "catalog", "load"]
__version__ = "0.1.0"

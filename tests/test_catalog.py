"""Catalog entries: each names a real family and carries byte-exact prompts."""

import pytest

from embzoo.catalog import CATALOG, lookup
from embzoo.registry import family_modules


def test_every_entry_names_a_family_module():
    families = {m.__name__.rsplit(".", 1)[-1] for m in family_modules()}
    assert {e.family for e in CATALOG.values()} <= families


@pytest.mark.parametrize(
    "hub_id, name, prompt",
    [
        ("intfloat/e5-base-v2", "query", "query: "),
        ("BAAI/bge-base-en-v1.5", "query", "Represent this sentence for searching relevant passages: "),
        ("nomic-ai/nomic-embed-text-v1.5", "document", "search_document: "),
        ("Snowflake/snowflake-arctic-embed-m-v2.0", "query", "query: "),
    ],
)
def test_prompts_are_byte_exact(hub_id, name, prompt):
    assert lookup(hub_id).prompts[name] == prompt


def test_default_is_the_bundled_minilm():
    entry = lookup(None)
    assert entry.hub_id == "sentence-transformers/all-MiniLM-L6-v2" and entry.pooling == ("mean",)
    assert lookup("nomic-ai/nomic-embed-text-v1.5").matryoshka_layer_norm

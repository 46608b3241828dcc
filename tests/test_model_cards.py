"""model_cards/: one committed card per catalog entry, each exactly what embzoo.model_cards renders from the catalog,
with Hub metadata, byte-exact prompts and parity evidence that names test files that exist."""

from pathlib import Path

import pytest

from embzoo.catalog import CATALOG, lookup
from embzoo.model_cards import (
    FAMILY_EVIDENCE,
    MODEL_EVIDENCE,
    REGENERATE,
    card_filename,
    evidence,
    literal,
    render_card,
    split_front_matter,
    write_cards,
)

ROOT = Path(__file__).resolve().parents[1]
CARDS = ROOT / "model_cards"
FIX = f"the committed model cards are out of date: run `{REGENERATE}` (or `make cards`) and commit model_cards/"


def test_every_entry_has_its_card_and_no_card_is_stale():
    expected = {card_filename(hub_id) for hub_id in CATALOG}
    committed = {p.name for p in CARDS.glob("*.md")}
    assert committed - expected == set(), f"cards of no catalog entry: {sorted(committed - expected)}; {FIX}"
    assert expected - committed == set(), f"catalog entries without a card: {sorted(expected - committed)}; {FIX}"


def test_committed_cards_match_the_catalog(tmp_path):
    written = write_cards(tmp_path)
    assert [p.name for p in written] == [card_filename(h) for h in CATALOG]
    differ = [
        p.name for p in written if not (CARDS / p.name).is_file() or (CARDS / p.name).read_text() != p.read_text()
    ]
    assert differ == [], f"{differ}: {FIX}"


def test_write_cards_removes_cards_of_entries_no_longer_catalogued(tmp_path):
    (tmp_path / "old__model.md").write_text("stale")
    (tmp_path / "notes.txt").write_text("kept")
    write_cards(tmp_path)
    assert not (tmp_path / "old__model.md").exists() and (tmp_path / "notes.txt").exists()


@pytest.mark.parametrize(
    "hub_id, pipeline_tag, tags",
    [
        ("BAAI/bge-m3", "sentence-similarity", {"embzoo", "bert", "sentence-transformers", "sparse", "colbert"}),
        ("BAAI/bge-reranker-base", "text-ranking", {"cross-encoder", "reranker", "sentence-transformers"}),
        ("Qwen/Qwen3-Reranker-0.6B", "text-ranking", {"reranker"}),
        ("jinaai/jina-reranker-v3", "text-ranking", {"reranker"}),
        ("naver/splade-v3", "sentence-similarity", {"splade", "sparse-encoder", "sentence-transformers"}),
        ("colbert-ir/colbertv2.0", "sentence-similarity", {"colbert"}),
        ("nomic-ai/nomic-embed-text-v1.5", "sentence-similarity", {"matryoshka", "nomic_bert"}),
    ],
)
def test_front_matter(hub_id, pipeline_tag, tags):
    metadata, body = split_front_matter(render_card(lookup(hub_id)))
    assert metadata["library_name"] == "embzoo" and metadata["base_model"] == hub_id
    assert metadata["pipeline_tag"] == pipeline_tag and metadata["license"] == lookup(hub_id).license
    assert tags <= set(metadata["tags"])
    assert body.startswith(f"\n# {hub_id}\n")


def test_sentence_transformers_claims_are_honest():
    assert "sentence-transformers" not in split_front_matter(render_card(lookup("colbert-ir/colbertv2.0")))[0]["tags"]
    assert "PyLate" in render_card(lookup("colbert-ir/colbertv2.0"))
    llm2vec = render_card(lookup("McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised"))
    assert "does not load LLM2Vec" in llm2vec and "SentenceTransformer(" not in llm2vec
    assert 'SentenceTransformer("nomic-ai/nomic-embed-text-v1", trust_remote_code=True)' in render_card(
        lookup("nomic-ai/nomic-embed-text-v1")
    )
    assert 'CrossEncoder("cross-encoder/ms-marco-MiniLM-L6-v2")' in render_card(
        lookup("cross-encoder/ms-marco-MiniLM-L6-v2")
    )
    assert 'SparseEncoder("naver/splade-v3")' in render_card(lookup("naver/splade-v3"))


def test_prompts_are_shown_byte_exact():
    assert literal("query: ") == '`"query: "`'  # the trailing space stays visible
    assert literal("Instruct: {instruction}\nQuery:") == '`"Instruct: {instruction}\\nQuery:"`'
    assert literal("a `b`") == '``"a `b`"``'
    qwen = render_card(lookup("Qwen/Qwen3-Embedding-0.6B"))
    assert '- instruction template: `"Instruct: {instruction}\\nQuery:"`' in qwen
    assert '- end token (every input ends with it): `"<|endoftext|>"`' in qwen
    assert 'task `retrieval.query`: `"Represent the query for retrieving evidence documents: "`' in render_card(
        lookup("jinaai/jina-embeddings-v3")
    )


def test_usage_follows_the_kind():
    assert 'output=["sentence", "sparse", "multivector"]' in render_card(lookup("BAAI/bge-m3"))
    assert "m.encode_query(" in render_card(lookup("lightonai/GTE-ModernColBERT-v1"))
    assert 'output="sparse"' in render_card(lookup("naver/splade-v3"))
    assert 'task="retrieval.query"' in render_card(lookup("jinaai/jina-embeddings-v3"))
    assert "dimensions=256)  # Matryoshka: layer norm" in render_card(lookup("nomic-ai/nomic-embed-text-v1.5"))
    assert "dimensions=" not in render_card(lookup("BAAI/bge-base-en-v1.5"))
    assert 'prompt_name="passage"' in render_card(lookup("intfloat/e5-base-v2"))
    reranker = render_card(lookup("BAAI/bge-reranker-base"))
    assert "r.rank(" in reranker and "m.encode(" not in reranker and 'activation="none"' in reranker
    assert "instruction=" in render_card(lookup("Qwen/Qwen3-Reranker-0.6B"))


@pytest.mark.parametrize("hub_id", list(CATALOG))
def test_parity_evidence_names_existing_tests(hub_id):
    found = evidence(lookup(hub_id))
    assert found[0] == FAMILY_EVIDENCE[lookup(hub_id).family]
    assert all((ROOT / path).is_file() for path, _ in found), found


def test_evidence_tables_name_catalogued_things():
    assert set(MODEL_EVIDENCE) <= set(CATALOG)
    assert {e.family for e in CATALOG.values()} <= set(FAMILY_EVIDENCE)

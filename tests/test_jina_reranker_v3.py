"""jina-reranker-v3 (listwise): our scores vs a reference written here from its `rerank` code and FAMILIES.md §10
(transformers Qwen3 on the same prompt's ids, hidden states at the markers, the projector, cosine, blocks combined
by weighted query vectors); ranking order; block splitting; truncation; marker stripping; template strings."""

import dataclasses
import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import mlp_rows
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

import embzoo
from embzoo import listwise_templates as T
from embzoo.catalog import CATALOG
from embzoo.cli import main
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import SnapshotError
from embzoo.loading_rerankers import KINDS
from embzoo.packing import counting_tokens

RECIPE = "jinaai/jina-reranker-v3"
# the reference's format_docs_prompts_func / FAMILIES.md §10, byte-exact
SYSTEM = "<|im_start|>system\nYou are a search relevance expert who can determine a ranking of the passages based on how relevant they are to the query. If the query is a question, how relevant a passage is depends on how well it answers the question. If not, try to analyze the intent of the query and assess how well each passage satisfies the intent. If an instruction is provided, you should follow the instruction when determining the ranking.<|im_end|>\n<|im_start|>user\n"  # noqa: E501
SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|embed_token|>", "<|rerank_token|>"]
QUERY = "what is rope?"
DOCS = [
    "Rotary position embeddings rotate query and key vectors by position.",
    "Rope is a bundle of fibres twisted together — Seil, corde, 绳子.",
    "A rope can hold about 1000 kg; RoPE was proposed in 2021.",
    "",
    "Knots: bowline, clove hitch, figure eight.",
]


def write_tokenizer(folder, context):
    """A byte-level BPE tokenizer (any text round-trips) with the chat, marker and think tokens."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tok = Tokenizer(models.BPE({c: i for i, c in enumerate(alphabet)}, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<think>", "</think>"]])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": context, "pad_token": "<|endoftext|>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return tok.get_vocab_size()


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny random JinaForRanking in the Hub layout (Qwen3 weights under model., projector.0 / .2): returns
    (folder, transformers model, projector weights, tokenizer)."""

    def build(context=100_000, name="jina", positions=32768):
        folder = tmp_path / name
        folder.mkdir()
        vocab = write_tokenizer(folder, context)
        torch.manual_seed(0)
        cfg = Qwen3Config(
            vocab_size=vocab,
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=positions,
            initializer_range=0.3,
            tie_word_embeddings=True,
        )
        cfg._attn_implementation = "eager"
        model = Qwen3ForCausalLM(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:  # norms start at a constant: noise shows a misplaced one
                    p.add_(0.2 * torch.randn_like(p))
        model.save_pretrained(folder)
        proj = {"projector.0.weight": torch.randn(16, 32) * 0.3, "projector.2.weight": torch.randn(512, 16) * 0.3}
        weights = load_file(folder / "model.safetensors") | proj
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | {"architectures": ["JinaForRanking"]}))
        return folder, model, proj, AutoTokenizer.from_pretrained(str(folder))

    return build


# ---- the reference, written from jina-reranker-v3's modeling.py (rerank, _truncate_texts, format_docs_prompts_func)


def reference_prompt(query, docs, instruction=None):
    for marker in ("<|rerank_token|>", "<|embed_token|>"):
        query = query.replace(marker, "")
        docs = [d.replace(marker, "") for d in docs]
    body = (
        f"I will provide you with {len(docs)} passages, each indicated by a numerical identifier. "
        f"Rank the passages based on their relevance to query: {query}\n"
    )
    if instruction:
        body += f"<instruct>\n{instruction}\n</instruct>\n"
    body += "\n".join(f'<passage id="{i}">\n{d}<|embed_token|>\n</passage>' for i, d in enumerate(docs)) + "\n"
    body += f"<query>\n{query}<|rerank_token|>\n</query>"
    return SYSTEM + body + SUFFIX


def reference_blocks(lengths, query_length, context, block_size, max_doc):
    blocks, block, capacity = [], [], context - 2 * query_length
    for i, n in enumerate(lengths):
        block.append(i)
        capacity -= n
        if len(block) >= block_size or capacity <= max_doc:
            blocks.append(block)
            block, capacity = [], context - 2 * query_length
    return blocks + ([block] if block else [])


def reference_scores(
    model, proj, tok, query, docs, *, block_size=125, max_query=512, max_doc=2048, instruction=None, blocks=None
):
    """The reference's scores; blocks: the document indices of each prompt (None = the reference's own split)."""

    def cut(text, limit):
        ids = tok(text, truncation=True, max_length=limit)["input_ids"]
        return (tok.decode(ids) if len(ids) >= limit else text), len(ids)

    query, query_length = cut(query, max_query)
    docs, lengths = zip(*[cut(d, max_doc) for d in docs], strict=True)
    qid, did = tok.convert_tokens_to_ids("<|rerank_token|>"), tok.convert_tokens_to_ids("<|embed_token|>")
    queries, documents, weights = [], [], []
    if blocks is None:
        blocks = reference_blocks(lengths, query_length, tok.model_max_length, block_size, max_doc)
    for block in blocks:
        ids = torch.tensor(tok(reference_prompt(query, [docs[i] for i in block], instruction))["input_ids"])
        with torch.no_grad():
            hidden = model.model(input_ids=ids[None]).last_hidden_state[0]
            q, d = (
                F.linear(F.relu(F.linear(hidden[ids == t], proj["projector.0.weight"])), proj["projector.2.weight"])
                for t in (qid, did)
            )  # noqa: E501
        scores = F.cosine_similarity(d, q.expand_as(d), dim=-1).numpy()
        queries.append(q.numpy())
        documents.extend(d.numpy())
        weights.append(((1.0 + scores) / 2.0).max())
    query_vector = np.average(np.array(queries), axis=0, weights=weights)
    documents = np.array(documents)
    return (np.dot(query_vector, documents.T) / (np.linalg.norm(query_vector) * np.linalg.norm(documents, axis=1)))[0]


def load(folder, **kwargs):
    return embzoo.load(folder, recipe=RECIPE, device="cpu", dtype="float32", **kwargs)


def limit(reranker, **limits):
    """The reranker with its prompt builder rebuilt with other truncation limits (query_tokens, document_tokens)."""
    old = reranker.prompts
    reranker.prompts = T.JinaV3Prompts(old.hf, old.context, positions=old.positions, **limits)
    return reranker


def check(ours, want):
    diff = float(np.abs(ours - want).max())
    assert diff <= 1e-4, diff
    return diff


# ---- parity


@pytest.mark.parametrize("instruction", [None, "Prefer passages about machine learning."])
def test_scores_and_order_match_the_reference(checkpoint, instruction):
    folder, model, proj, tok = checkpoint()
    reranker = load(folder)
    assert isinstance(reranker, embzoo.ListwiseReranker)
    want = reference_scores(model, proj, tok, QUERY, DOCS, instruction=instruction)
    with mlp_rows(reranker.scorer.backbone) as rows:
        ranked = reranker.rank(QUERY, DOCS, instruction=instruction, return_documents=True)
    assert rows["last"] == [len(DOCS) + 1] and rows["first"][0] > len(DOCS) + 1  # the last layer: the markers only
    check(np.array([r["score"] for r in sorted(ranked, key=lambda r: r["index"])]), want)
    assert [r["index"] for r in ranked] == np.argsort(-want, kind="stable").tolist()
    assert all(r["document"] == DOCS[r["index"]] for r in ranked)
    assert [r["index"] for r in reranker.rank(QUERY, DOCS, top_k=2, instruction=instruction)] == [
        r["index"] for r in ranked[:2]
    ]


@pytest.mark.parametrize("block_size", [1, 2, 3])
def test_blocks_of_a_long_list_combine_like_the_reference(checkpoint, block_size):
    folder, model, proj, tok = checkpoint()
    reranker = load(folder)
    reranker.prompts.block_documents = block_size
    docs = DOCS * 2
    want = reference_scores(model, proj, tok, QUERY, docs, block_size=block_size)
    packed = reranker.score([(QUERY, d) for d in docs])  # all blocks in one packed batch
    alone = reranker.score([(QUERY, d) for d in docs], batch_tokens=1)  # one block per batch
    check(packed, want)
    np.testing.assert_allclose(packed, alone, atol=1e-5)
    with counting_tokens() as count:
        ranked = reranker.rank(QUERY, docs)
    assert [r["index"] for r in ranked] == np.argsort(-want, kind="stable").tolist()
    blocks = [docs[i : i + block_size] for i in range(0, len(docs), block_size)]
    assert count.tokens == sum(len(tok(reference_prompt(QUERY, b))["input_ids"]) for b in blocks)  # a server's usage


def test_context_closes_blocks_like_the_reference(checkpoint):
    folder, model, proj, tok = checkpoint(context=160)
    reranker = load(folder)
    limit(reranker, document_tokens=40)
    lengths = [len(tok(d)["input_ids"]) for d in DOCS]
    query_length = len(tok(QUERY)["input_ids"])
    expected = reference_blocks(lengths, query_length, 160, 125, 40)
    assert 1 < len(expected) < len(DOCS)  # the context, not the block size, splits this list
    assert [list(r) for r in T.blocks(lengths, query_length, 160, 125, 40)] == expected
    check(reranker.score([(QUERY, d) for d in DOCS]), reference_scores(model, proj, tok, QUERY, DOCS, max_doc=40))
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(0, 60, size=int(rng.integers(1, 30))).tolist()
        got = [list(r) for r in T.blocks(lengths, 7, 300, 4, 50)]
        assert got == reference_blocks(lengths, 7, 300, 4, 50)


def test_blocks_beyond_the_positions_are_split_again(checkpoint):
    folder, model, proj, tok = checkpoint(positions=1200)  # context = min(100000, 1200)
    reranker = load(folder)
    limit(reranker, document_tokens=100)
    docs = [f"document {k}: " + "abc " * 30 for k in range(12)]
    query_length = len(tok(QUERY)["input_ids"])
    lengths = [len(tok(d)["input_ids"]) for d in docs]
    first = [list(r) for r in T.blocks(lengths, query_length, 1200, 125, 100)]
    assert max(len(tok(reference_prompt(QUERY, [docs[i] for i in b]))["input_ids"]) for b in first) > 1200
    blocks, _ = reranker.prompts.encode(QUERY, docs, None)
    assert len(blocks) > len(first) and all(len(b.ids) <= 1200 for b in blocks)
    assert [i for b in blocks for i in b.documents] == list(range(len(docs)))
    want = reference_scores(model, proj, tok, QUERY, docs, max_doc=100, blocks=[list(b.documents) for b in blocks])
    check(reranker.score([(QUERY, d) for d in docs]), want)
    limit(reranker, document_tokens=2048)
    with pytest.raises(ValueError, match="one document is .* more than the model's 1200 positions"):
        reranker.rank(QUERY, ["abc " * 400])


def test_truncation_limits_and_warning(checkpoint, caplog):
    folder, model, proj, tok = checkpoint()
    reranker = load(folder)
    limit(reranker, query_tokens=6, document_tokens=9)
    query, docs = QUERY + " and why do transformers use it", [*DOCS, "word " * 40]
    want = reference_scores(model, proj, tok, query, docs, max_query=6, max_doc=9)
    with caplog.at_level(logging.WARNING, logger="embzoo.listwise_templates"):
        check(reranker.score([(query, d) for d in docs]), want)
    cut = 1 + sum(len(tok(d)["input_ids"]) > 9 for d in docs)
    assert [r.getMessage() for r in caplog.records] == [
        f"{cut} of {1 + len(docs)} texts were cut (queries to 6 tokens, documents to 9)"
    ]
    # a text exactly at the limit is decoded back (the reference's >=) but not counted as cut
    texts, lengths, n = reranker.prompts.truncate(["abcdefghi", "abc"], 9)
    assert (texts, lengths, n) == (["abcdefghi", "abc"], [9, 3], 0)


def test_truncation_never_toggles_a_shared_backend(checkpoint):
    folder, *_ = checkpoint()
    prompts = limit(load(folder), query_tokens=6, document_tokens=9).prompts
    lists = [(QUERY + " and why" * k, [d * (k + 1) for d in DOCS]) for k in range(8)]
    serial = [prompts.encode(q, d, None) for q, d in lists]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            assert list(pool.map(lambda item: prompts.encode(*item, None), lists)) == serial
    assert prompts.tokenizer.truncation is None
    assert {n: b.truncation["max_length"] for n, b in prompts.cutters.items()} == {6: 6, 9: 9}


def test_marker_strings_are_stripped_from_user_text(checkpoint):
    folder, model, proj, tok = checkpoint()
    reranker = load(folder)
    marked = [d + "<|embed_token|>" for d in DOCS[:3]] + ["<|rerank_token|>x<|embed_token|>"]
    plain = DOCS[:3] + ["x"]
    got = reranker.score([("what<|rerank_token|> is rope?<|embed_token|>", d) for d in marked])
    np.testing.assert_allclose(got, reranker.score([(QUERY, d) for d in plain]), atol=1e-6)
    check(got, reference_scores(model, proj, tok, "what<|rerank_token|> is rope?<|embed_token|>", marked))
    with pytest.raises(ValueError, match="instruction may not contain"):
        reranker.rank(QUERY, DOCS, instruction="use <|rerank_token|>")


def test_score_groups_pairs_by_query(checkpoint):
    folder, *_ = checkpoint()
    reranker = load(folder)
    other = "knots"
    pairs = [(QUERY, DOCS[0]), (other, DOCS[1]), (QUERY, DOCS[2]), (other, DOCS[3]), (QUERY, DOCS[4])]
    got = reranker.score(pairs)
    np.testing.assert_allclose(got[[0, 2, 4]], reranker.score([(QUERY, DOCS[i]) for i in (0, 2, 4)]), atol=1e-6)
    np.testing.assert_allclose(got[[1, 3]], reranker.score([(other, DOCS[i]) for i in (1, 3)]), atol=1e-6)
    with pytest.raises(ValueError, match="cosine only"):
        reranker.rank(QUERY, DOCS, activation="sigmoid")
    with pytest.raises(ValueError, match="at least one document"):
        reranker.rank(QUERY, [])


# ---- loading, templates, catalog


def test_projector_is_loaded_strictly(checkpoint):
    folder, _, proj, _ = checkpoint()
    reranker = load(folder)
    head = reranker.scorer.projector
    assert torch.equal(head[0].weight, proj["projector.0.weight"]) and torch.equal(
        head[2].weight, proj["projector.2.weight"]
    )
    weights = load_file(folder / "model.safetensors")
    save_file(weights | {"projector.0.bias": torch.zeros(16)}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(WeightMismatch, match="projector.0.bias"):
        load(folder)
    del weights["projector.2.weight"]
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(SnapshotError, match="projector.2.weight"):
        load(folder)


def test_template_strings_are_byte_exact():
    assert T.SYSTEM == SYSTEM and T.SUFFIX == SUFFIX
    assert (T.DOC_MARKER, T.QUERY_MARKER) == ("<|embed_token|>", "<|rerank_token|>")
    assert (T.BLOCK_DOCUMENTS, T.QUERY_TOKENS, T.DOCUMENT_TOKENS) == (125, 512, 2048)
    for instruction in (None, "", "be strict"):
        for docs in (["a"], ["a", "b<|embed_token|>", ""]):
            assert T.prompt("q<|rerank_token|>", docs, instruction) == reference_prompt("q", docs, instruction)
    assert T.prompt("q", ["d1", "d2"], "i") == (
        SYSTEM + "I will provide you with 2 passages, each indicated by a numerical identifier. Rank the passages "
        'based on their relevance to query: q\n<instruct>\ni\n</instruct>\n<passage id="0">\nd1<|embed_token|>\n'
        '</passage>\n<passage id="1">\nd2<|embed_token|>\n</passage>\n<query>\nq<|rerank_token|>\n</query>' + SUFFIX
    )


def test_the_catalogs_activation_must_be_cosine(checkpoint, monkeypatch):
    folder, *_ = checkpoint()
    monkeypatch.setitem(CATALOG, RECIPE, dataclasses.replace(CATALOG[RECIPE], activation="sigmoid"))
    with pytest.raises(ValueError, match="cosine only; activation 'sigmoid'"):
        load(folder)


def test_a_local_copy_is_recognised_by_its_architecture(checkpoint):
    folder, model, proj, tok = checkpoint()
    reranker = embzoo.load(folder, device="cpu", dtype="float32")  # no recipe: architectures ["JinaForRanking"]
    assert isinstance(reranker, embzoo.ListwiseReranker)
    check(reranker.score([(QUERY, d) for d in DOCS]), reference_scores(model, proj, tok, QUERY, DOCS))


def test_catalog_entry():
    entry = CATALOG[RECIPE]
    assert (entry.family, entry.reranker, entry.dimension) == ("llama", "jina_v3", 1)
    assert KINDS["jina_v3"].wrapper is embzoo.ListwiseReranker


def test_rerank_command(checkpoint, capsys):
    folder, *_ = checkpoint()
    want = load(folder).rank(QUERY, DOCS[:3])
    args = ["rerank", "--model", str(folder), "--device", "cpu", "--dtype", "float32", "--query", QUERY, *DOCS[:3]]
    main([*args, "--recipe", RECIPE, "--batch-tokens", "100"])  # one block per batch
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["rank"], r["index"]) for r in rows] == [(k + 1, w["index"]) for k, w in enumerate(want)]
    np.testing.assert_allclose([r["score"] for r in rows], [w["score"] for w in want], atol=1e-6)
    with pytest.raises(SystemExit, match="embzoo rerank: .* scores by cosine only"):
        main([*args, "--recipe", RECIPE, "--activation", "sigmoid"])


def test_embzoo_folder_reloads_bit_exactly(checkpoint, tmp_path):
    from conftest import assert_round_trip

    folder, _, _, _ = checkpoint()
    scores = lambda r: [row["score"] for row in r.rank(QUERY, DOCS)]  # noqa: E731
    assert_round_trip(folder, tmp_path / "converted", scores, recipe=RECIPE)
    from transformers import AutoModel

    model = AutoModel.from_pretrained(tmp_path / "converted")  # a listwise prompt is no padded batch of pairs
    with pytest.raises(TypeError, match=r"call model.embzoo.rank\(query, documents\)"):
        model(input_ids=torch.ones(1, 4, dtype=torch.long))

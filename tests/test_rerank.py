"""Cross-encoder rerankers through embzoo.load: scores against transformers' *ForSequenceClassification on
the tokenizer's own padded pair encoding, against sentence-transformers' CrossEncoder, rank / score
behaviour, bad input, and the `embzoo rerank` command."""

import dataclasses
import json
import logging

import numpy as np
import pytest
import torch
from conftest import TINY_QWEN3, mlp_rows, no_type_ids, reference_logits
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    ModernBertConfig,
    ModernBertForSequenceClassification,
    Qwen3Config,
    Qwen3ForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

import embzoo
from embzoo.catalog import CATALOG
from embzoo.cli import main
from embzoo.config import UnsupportedConfig

try:
    from transformers import GteConfig, GteForSequenceClassification
except ImportError:  # older transformers have no Gte classes
    GteConfig = GteForSequenceClassification = None

# std 0.2 initial weights (transformers' 0.02 gives near-constant scores that would hide a wrong head or input)
TINY = dict(
    vocab_size=30522,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    initializer_range=0.2,
)
QUERY = "how do rotary position embeddings work?"
DOCS = [
    "Rotary embeddings rotate query and key vectors by an angle proportional to the token position.",
    "A rope is a length of fibres twisted together.",
    "",
    "Position information " * 30,  # longer than the limit below: cut, longest first
    "Transformers attend over all tokens; positions come from embeddings added to the input.",
]
PAIRS = [(QUERY, d) for d in DOCS] + [("", "an empty query"), ("short", "pair"), ("long query " * 20, "short doc")]
MAX_LEN = 40  # tokens per pair in the parity tests, so that some pairs are truncated


def bert_checkpoint(make_checkpoint, **changes):
    config = BertConfig(**TINY, max_position_embeddings=64, num_labels=1, **changes)
    return make_checkpoint(BertForSequenceClassification, config, noise=0.1)


CASES = {
    "bert": bert_checkpoint,
    # type_vocab_size 2 with a random second row: passing type ids the tokenizer does not return would show
    "xlm-roberta": lambda build: build(
        XLMRobertaForSequenceClassification,
        XLMRobertaConfig(**TINY, max_position_embeddings=66, pad_token_id=0, type_vocab_size=2, num_labels=1),
        noise=0.1,
    ),
    "modernbert-mean": lambda build: build(
        ModernBertForSequenceClassification,
        ModernBertConfig(
            **TINY,
            max_position_embeddings=64,
            pad_token_id=0,
            cls_token_id=101,
            sep_token_id=102,
            bos_token_id=101,
            eos_token_id=102,
            global_attn_every_n_layers=2,
            local_attention=8,
            classifier_pooling="mean",
            num_labels=1,
        ),
        noise=0.1,
    ),
}
if GteForSequenceClassification is not None:
    CASES["gte"] = lambda build: build(
        GteForSequenceClassification,
        GteConfig(**TINY, max_position_embeddings=64, pad_token_id=0, type_vocab_size=2, num_labels=1),
        noise=0.1,
    )


@pytest.mark.parametrize("case", list(CASES))
def test_scores_match_transformers(make_checkpoint, case):
    folder, ref = CASES[case](make_checkpoint)
    if case in ("xlm-roberta", "modernbert-mean"):
        no_type_ids(folder)
    reranker = embzoo.load(folder, device="cpu", max_seq_length=MAX_LEN)
    assert isinstance(reranker, embzoo.Reranker) and reranker.max_seq_length == MAX_LEN
    want = reference_logits(folder, ref, PAIRS, MAX_LEN)
    with mlp_rows(reranker.scorer.backbone) as rows:
        got = reranker.score(PAIRS, activation="none")
    # a first-token head: the last layer computes that token alone (a mean head reads every token)
    assert sum(rows["last"]) == (len(PAIRS) if reranker.scorer.head.pooling == "cls" else sum(rows["first"]))
    assert got.dtype == np.float32 and got.shape == (len(PAIRS),)
    torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=0)
    # batch invariance: one pair per batch gives the same scores
    np.testing.assert_allclose(reranker.score(PAIRS, activation="none", batch_tokens=1), got, atol=1e-5, rtol=0)


def test_matches_sentence_transformers_cross_encoder(make_checkpoint):
    from sentence_transformers import CrossEncoder

    folder, _ = bert_checkpoint(make_checkpoint)
    reranker = embzoo.load(folder, device="cpu")
    st = CrossEncoder(str(folder), device="cpu")
    assert reranker.activation == "sigmoid"  # no activation stored: sigmoid for one label, as CrossEncoder
    np.testing.assert_allclose(reranker.score(PAIRS), st.predict(PAIRS), atol=1e-5, rtol=0)
    ours = reranker.rank(QUERY, DOCS, return_documents=True)
    theirs = st.rank(QUERY, DOCS, return_documents=True)
    assert [r["index"] for r in ours] == [r["corpus_id"] for r in theirs]
    assert [r["document"] for r in ours] == [r["text"] for r in theirs]
    np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=1e-5, rtol=0)


def test_stored_activation_is_the_default(make_checkpoint, tmp_path):
    """The legacy config.json key (the ms-marco cross-encoders store Identity) and sentence-transformers 6's
    config_sentence_transformers.json both set the default, as CrossEncoder reads them."""
    from sentence_transformers import CrossEncoder

    folder, _ = bert_checkpoint(
        make_checkpoint, sbert_ce_default_activation_function="torch.nn.modules.linear.Identity"
    )
    reranker = embzoo.load(folder, device="cpu")
    assert reranker.activation == "none"
    np.testing.assert_allclose(reranker.score(PAIRS), CrossEncoder(str(folder)).predict(PAIRS), atol=1e-5, rtol=0)
    saved = tmp_path / "saved"
    CrossEncoder(str(folder), activation_fn=torch.nn.Sigmoid()).save(str(saved))
    assert json.loads((saved / "config_sentence_transformers.json").read_text())["activation_fn"].endswith("Sigmoid")
    assert embzoo.load(saved, device="cpu").activation == "sigmoid"


def test_stored_prompts_prefix_queries_as_cross_encoder_does(make_checkpoint, tmp_path):
    """A CrossEncoder saved with prompts and a default prompt: the default prefixes every query, instruction=
    passes another prompt (CrossEncoder's prompt=); to_cross_encoder() resolves them as CrossEncoder does."""
    from sentence_transformers import CrossEncoder

    folder, _ = bert_checkpoint(make_checkpoint)
    saved = tmp_path / "prompted"
    prompts = {"query": "query: ", "web": "Given a web query: "}
    CrossEncoder(str(folder), prompts=prompts, default_prompt_name="query").save(str(saved))
    reranker, st = embzoo.load(saved, device="cpu"), CrossEncoder(str(saved), device="cpu")
    adapter = reranker.to_cross_encoder()
    for ours, theirs in ((reranker.score(PAIRS), st.predict(PAIRS)), (adapter.predict(PAIRS), st.predict(PAIRS))):
        np.testing.assert_allclose(ours, theirs, atol=1e-5, rtol=0)
    for prompt in ("", prompts["web"]):
        theirs = st.predict(PAIRS, prompt=prompt)
        np.testing.assert_allclose(reranker.score(PAIRS, instruction=prompt), theirs, atol=1e-5, rtol=0)
        np.testing.assert_allclose(adapter.predict(PAIRS, prompt=prompt), theirs, atol=1e-5, rtol=0)
    assert not np.allclose(reranker.score(PAIRS), reranker.score(PAIRS, instruction=""))
    ranked = [r["corpus_id"] for r in st.rank(QUERY, DOCS)]
    assert [r["index"] for r in reranker.rank(QUERY, DOCS)] == ranked


def test_the_catalogs_activation_comes_first(make_checkpoint):
    folder, _ = bert_checkpoint(make_checkpoint)
    assert embzoo.load(folder, device="cpu").activation == "sigmoid"  # no stored activation: sentence-transformers'
    reranker = embzoo.load(folder, device="cpu", recipe="BAAI/bge-reranker-base")  # its card prints raw logits
    assert reranker.activation == "none"
    np.testing.assert_allclose(reranker.score(PAIRS), reranker.score(PAIRS, activation="none"), atol=0)
    assert {h for h, e in CATALOG.items() if e.activation == "none"} == {
        "BAAI/bge-reranker-base",
        "BAAI/bge-reranker-large",
        "BAAI/bge-reranker-v2-m3",
        "Alibaba-NLP/gte-multilingual-reranker-base",
    }
    with pytest.raises(ValueError, match="activation 'tanh'"):
        dataclasses.replace(CATALOG["BAAI/bge-reranker-base"], activation="tanh")


def test_an_activation_embzoo_lacks_falls_back_to_sigmoid_with_a_warning(tmp_path, caplog):
    from embzoo.conversion.snapshot import read_snapshot
    from embzoo.cross_encoder import default_activation

    (tmp_path / "config.json").write_text(json.dumps({"sentence_transformers": {"activation_fn": "torch.nn.Tanh"}}))
    with caplog.at_level(logging.WARNING, logger="embzoo"):
        assert default_activation(read_snapshot(tmp_path)) == "sigmoid"
    assert "'torch.nn.Tanh'" in caplog.text and "activation='none'" in caplog.text


def test_rank_and_score_options(make_checkpoint):
    folder, _ = bert_checkpoint(make_checkpoint)
    reranker = embzoo.load(folder, device="cpu")
    logits = reranker.score([(QUERY, d) for d in DOCS], activation="none")
    probabilities = reranker.score([(QUERY, d) for d in DOCS])
    np.testing.assert_allclose(probabilities, 1 / (1 + np.exp(-logits)), atol=1e-6, rtol=0)
    full = reranker.rank(QUERY, DOCS)
    assert [r["index"] for r in full] == list(np.argsort(-logits))
    assert all(set(r) == {"index", "score"} for r in full)
    np.testing.assert_allclose([r["score"] for r in full], np.sort(probabilities)[::-1], atol=1e-6, rtol=0)
    top = reranker.rank(QUERY, DOCS, top_k=2, return_documents=True, activation="none")
    assert [r["index"] for r in top] == [r["index"] for r in full[:2]]
    assert [r["document"] for r in top] == [DOCS[r["index"]] for r in top]
    np.testing.assert_allclose([r["score"] for r in top], logits[[r["index"] for r in top]], atol=1e-6)
    assert len(reranker.rank(QUERY, DOCS, top_k=100)) == len(DOCS)
    assert reranker.score([]).shape == (0,)
    with pytest.raises(ValueError, match="top_k must be a positive"):
        reranker.rank(QUERY, DOCS, top_k=0)


class ParityScorer(torch.nn.Module):
    """Scores 1 for pairs of an even token count, 0 for odd: exact ties."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return ((batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]) % 2 == 0).float()


def test_rank_keeps_the_input_order_of_ties(make_checkpoint):
    folder, _ = bert_checkpoint(make_checkpoint)
    reranker = embzoo.Reranker(ParityScorer(), embzoo.load(folder, device="cpu").inputs, activation="none")
    docs = ["a", "a b", "c", "c d", "e", "e f g"]  # 5, 6, 5, 6, 5, 7 tokens with [CLS] q [SEP] d [SEP]
    assert [r["index"] for r in reranker.rank("q", docs)] == [1, 3, 0, 2, 4, 5]


def test_bad_input_is_explained(make_checkpoint, caplog):
    folder, _ = bert_checkpoint(make_checkpoint)
    reranker = embzoo.load(folder, device="cpu", max_seq_length=16)
    with pytest.raises(ValueError, match="at least one document"):
        reranker.rank(QUERY, [])
    with pytest.raises(TypeError, match="list of documents"):
        reranker.rank(QUERY, "one document")
    with pytest.raises(TypeError, match="item 1"):
        reranker.score([("q", "d"), ("q", 3)])
    with pytest.raises(TypeError, match="item 0"):
        reranker.score(["not a pair"])
    with pytest.raises(ValueError, match="takes no instruction"):
        reranker.rank(QUERY, DOCS, instruction="Judge relevance")
    with pytest.raises(ValueError, match="unknown activation"):
        reranker.score(PAIRS, activation="softmax")
    assert np.isfinite(reranker.score([("", ""), ("", "x")])).all()
    with caplog.at_level(logging.WARNING, logger="embzoo"):
        reranker.score([(QUERY, "a " * 40), ("a", "b"), ("long " * 20, "doc")])
    warnings = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert warnings == [warnings[0]] and warnings[0].startswith("2 of 3 (query, document) pairs")


def test_unsupported_classifiers_are_refused(make_checkpoint):
    two_labels, _ = make_checkpoint(BertForSequenceClassification, BertConfig(**TINY, num_labels=2), name="two")
    with pytest.raises(UnsupportedConfig, match="2 labels"):
        embzoo.load(two_labels, device="cpu")
    qwen, _ = make_checkpoint(Qwen3ForSequenceClassification, Qwen3Config(**TINY_QWEN3, num_labels=1), name="qwen")
    with pytest.raises(UnsupportedConfig, match="no sequence-classification head for 'qwen3'"):
        embzoo.load(qwen, device="cpu")


def test_embedders_still_load_as_embedders():
    assert isinstance(embzoo.load(device="cpu"), embzoo.Embedder)


def test_cli_rerank(make_checkpoint, capsys, tmp_path):
    folder, _ = bert_checkpoint(make_checkpoint)
    want = embzoo.load(folder, device="cpu").rank(QUERY, DOCS, top_k=2, activation="none")
    main(
        ["rerank", "--model", str(folder), "--device", "cpu", "--query", QUERY, *DOCS, "--top-k", "2"]
        + ["--activation", "none"]
    )
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["rank"], r["index"], r["document"]) for r in rows] == [
        (i + 1, w["index"], DOCS[w["index"]]) for i, w in enumerate(want)
    ]
    np.testing.assert_allclose([r["score"] for r in rows], [w["score"] for w in want], atol=1e-6)
    src = tmp_path / "docs.txt"
    src.write_text("\n".join(d for d in DOCS if d) + "\n")
    main(
        ["rerank", "--model", str(folder), "--device", "cpu", "--query", QUERY, "--file", str(src), "--format", "table"]
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == f"query: {QUERY}" and lines[2].startswith(" 1. ") and len(lines) == 2 + 4
    minilm = str(embzoo.catalog.bundled_model_path())  # an embedder ranks by cosine
    main(["rerank", "--model", minilm, "--device", "cpu", "--query", "a cat", "a dog", "a kitten", "--format", "table"])
    lines = capsys.readouterr().out.splitlines()
    assert "(sentence scores, cpu)" in lines[0] and lines[2].endswith("a kitten")
    with pytest.raises(SystemExit, match="is an embedding model: it takes no --instruction or --activation"):
        main(["rerank", "--model", minilm, "--device", "cpu", "--query", "q", "doc", "--activation", "none"])
    with pytest.raises(SystemExit, match="give DOC arguments or --file"):
        main(["rerank", "--model", str(folder), "--query", "q"])
    main(["list"])
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["BAAI/bge-reranker-v2-m3", "bert", "head", "1", "8192", "-"] in listed


def test_cli_rerank_options_and_misuse(make_checkpoint, capsys):
    folder, _ = bert_checkpoint(make_checkpoint)
    base = ["rerank", "--model", str(folder), "--device", "cpu", "--query", QUERY, *DOCS]
    main([*base, "--recipe", "BAAI/bge-reranker-base", "--batch-tokens", "16"])  # the recipe's raw logits
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = embzoo.load(folder, device="cpu").rank(QUERY, DOCS, activation="none")
    assert [r["index"] for r in rows] == [w["index"] for w in want]
    np.testing.assert_allclose([r["score"] for r in rows], [w["score"] for w in want], atol=1e-5)
    with pytest.raises(SystemExit, match="embzoo rerank: .* takes no instruction; leave instruction=None"):
        main([*base, "--instruction", "be strict"])
    with pytest.raises(SystemExit, match="embzoo rerank: recipe 'no/such' is not in the catalog"):
        main([*base, "--recipe", "no/such"])
    for command in (["embed", "hello"], ["demo"]):
        with pytest.raises(SystemExit, match=f"embzoo {command[0]}: .* is a reranker, not an embedding model"):
            main([command[0], "--model", str(folder), "--device", "cpu", *command[1:]])


def test_rerankers_share_rank_and_the_ranker_protocol(make_checkpoint):
    from embzoo.reranker import Ranker

    folder, _ = bert_checkpoint(make_checkpoint)
    assert isinstance(embzoo.load(folder, device="cpu"), Ranker)
    assert not isinstance(embzoo.load(device="cpu"), Ranker)
    assert embzoo.Reranker.rank is embzoo.ListwiseReranker.rank is Ranker.rank


def test_embzoo_folder_reloads_bit_exactly(make_checkpoint, tmp_path):
    from conftest import assert_round_trip

    folder, _ = bert_checkpoint(make_checkpoint)  # the classification head stored as head.*
    assert_round_trip(folder, tmp_path / "converted", lambda r: r.score([(QUERY, d) for d in DOCS]))

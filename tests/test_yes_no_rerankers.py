"""Generative yes/no rerankers (Qwen3-Reranker, mxbai-rerank-v2, bge-reranker-v2-gemma): our one-row score vs
transformers' CausalLM full-vocabulary logits at the last position, on token ids built by references written
here from each model's reference code; template strings vs FAMILIES.md §9 and the references; truncation;
instructions; the catalog recipes reached through embzoo.load."""

import dataclasses
import json
import logging

import pytest
import torch
from conftest import mlp_rows, padded
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoTokenizer,
    GemmaConfig,
    GemmaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

import embzoo
from embzoo import yes_no_templates as T
from embzoo.catalog import CATALOG
from embzoo.config import UnsupportedConfig
from embzoo.conversion.score_row import score_row
from embzoo.conversion.snapshot import SnapshotError, read_snapshot
from embzoo.loading_rerankers import KINDS
from embzoo.reranker import Reranker

# FAMILIES.md §9 / the Qwen3-Reranker model card, byte-exact
QWEN3_PREFIX = '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'  # noqa: E501
QWEN3_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
QWEN3_DEFAULT = "Given a web search query, retrieve relevant passages that answer the query"
# mixedbread-ai/mxbai-rerank, MxbaiRerankV2
MXBAI_PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"  # noqa: E501
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_TASK = "You are a search relevance expert who evaluates how well documents match search queries. For each query-document pair, carefully analyze the semantic relationship between them, then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:"  # noqa: E501
# bge-reranker-v2-gemma's card (get_inputs) and FlagEmbedding
BGE_PROMPT = "Given a query A and a passage B, determine whether the passage contains an answer to the query by providing a prediction of either 'Yes' or 'No'."  # noqa: E501

QUERY = "what is rope?"
DOCS = [
    "Rotary position embeddings rotate query and key vectors by position.",
    "yes",
    "Rope is a bundle of fibres twisted together — Seil, corde, 绳子.",
    "no",
    "A rope can hold about 1000 kg; RoPE was proposed in 2021.",
    "",
]
LONG = "word " * 300
SIZES = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def write_tokenizer(folder):
    """A byte-level BPE tokenizer (any text round-trips) whose vocabulary has single tokens for "yes", "no",
    "Yes", "1", "0", and the chat and bos special tokens, saved as tokenizer.json + tokenizer_config.json."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    merges = [("y", "e"), ("ye", "s"), ("n", "o"), ("Y", "e"), ("Ye", "s")]
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<bos>", "<eos>"]
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ["<think>", "</think>"]])
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"pad_token": "<|endoftext|>"}))
    return tok.get_vocab_size()


@pytest.fixture
def checkpoint(tmp_path):
    """A tiny random *ForCausalLM saved in the Hub layout with the test tokenizer: (folder, model, tokenizer)."""

    def build(model_cls, config_cls, **config):
        folder = tmp_path / model_cls.__name__
        folder.mkdir()
        vocab = write_tokenizer(folder)
        torch.manual_seed(0)
        cfg = config_cls(vocab_size=vocab, initializer_range=0.3, **SIZES, **config)
        cfg._attn_implementation = "eager"
        model = model_cls(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:  # norms start at a constant: noise shows a misplaced one
                    p.add_(0.2 * torch.randn_like(p))
        model.save_pretrained(folder)
        return folder, model, AutoTokenizer.from_pretrained(str(folder))

    return build


# ---- references written from each model's code (transformers tokenizer calls, prepare_for_model spelled out)


def encode(tok, text, max_length=None):
    kw = {"max_length": max_length, "truncation": True} if max_length else {}
    return tok(text, add_special_tokens=False, **kw)["input_ids"]


def only_second(tok, first, second, max_length):
    """transformers 4's prepare_for_model(first, second, truncation="only_second", max_length), which cut second
    on the tokenizer's truncation_side."""
    overflow = len(first) + len(second) - max_length
    if overflow <= 0:
        return first + second
    return first + (second[overflow:] if tok.truncation_side == "left" else second[: len(second) - overflow])


def qwen3_reference(tok, pairs, instruction, max_length):
    """The Qwen3-Reranker card: format_instruction + process_inputs; token ids and (yes, no)."""
    prefix, suffix = encode(tok, QWEN3_PREFIX), encode(tok, QWEN3_SUFFIX)
    texts = [f"<Instruct>: {instruction or QWEN3_DEFAULT}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    body = tok(
        texts,
        padding=False,
        truncation="longest_first",
        return_attention_mask=False,
        max_length=max_length - len(prefix) - len(suffix),
    )["input_ids"]
    return [prefix + b + suffix for b in body], (tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no"))


def mxbai_reference(tok, pairs, instruction, max_length):
    """MxbaiRerankV2.prepare_inputs; token ids and ("1", "0")."""
    sep, task = encode(tok, "\n"), encode(tok, MXBAI_TASK)
    ids = []
    for q, d in pairs:
        query = f"query: {q}"
        if instruction:
            query = "".join([f"instruction: {instruction}", "\n", query])
        q_ids = encode(tok, query, max_length * 3 // 4)
        d_ids = encode(tok, f"document: {d}", max_length)
        body = only_second(tok, q_ids, sep + d_ids, max_length)
        ids.append(encode(tok, MXBAI_PREFIX) + body + sep + task + encode(tok, MXBAI_SUFFIX))
    return ids, (encode(tok, "1")[0], encode(tok, "0")[0])


def bge_reference(tok, pairs, prompt, max_length):
    """bge-reranker-v2-gemma's get_inputs; token ids and ("Yes", None)."""
    sep, prompt_ids = encode(tok, "\n"), encode(tok, prompt or BGE_PROMPT)
    ids = []
    for q, p in pairs:
        q_ids = encode(tok, f"A: {q}", max_length * 3 // 4)
        p_ids = encode(tok, f"B: {p}", max_length)
        ids.append(only_second(tok, [tok.bos_token_id] + q_ids, sep + p_ids, max_length) + sep + prompt_ids)
    return ids, (encode(tok, "Yes")[0], None)


def reference_scores(model, ids, positive, negative):
    """transformers' full-vocabulary logits at each sequence's last token: l(pos) − l(neg), or l(pos)."""
    input_ids, mask = padded(ids)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits
    last = logits[torch.arange(len(ids)), mask.sum(1) - 1]
    return last[:, positive] - (last[:, negative] if negative is not None else 0)


# model class, config class, extra config, catalog recipe, reference, the reference's length
CASES = {
    "qwen3_tied": (Qwen3ForCausalLM, Qwen3Config, {"tie_word_embeddings": True, "head_dim": 16},
                   "Qwen/Qwen3-Reranker-0.6B", qwen3_reference, 8192),
    "qwen3_untied": (Qwen3ForCausalLM, Qwen3Config, {"tie_word_embeddings": False, "head_dim": 16},
                     "Qwen/Qwen3-Reranker-8B", qwen3_reference, 8192),
    "mxbai": (Qwen2ForCausalLM, Qwen2Config, {"tie_word_embeddings": True}, "mixedbread-ai/mxbai-rerank-base-v2",
              mxbai_reference, 8192),
    "bge_gemma": (GemmaForCausalLM, GemmaConfig, {"head_dim": 8, "hidden_act": "gelu"}, "BAAI/bge-reranker-v2-gemma",
                  bge_reference, 1024),
}  # fmt: skip


def load_case(checkpoint, case, **load_kwargs):
    model_cls, config_cls, extra, recipe, reference, length = CASES[case]
    folder, model, tok = checkpoint(model_cls, config_cls, **extra)
    reranker = embzoo.load(folder, recipe=recipe, device="cpu", dtype="float32", **load_kwargs)
    return reranker, model, tok, reference, length


@pytest.mark.parametrize("case", sorted(CASES))
def test_score_row_matches_full_vocabulary_logits(checkpoint, case):
    reranker, model, tok, reference, length = load_case(checkpoint, case)
    assert isinstance(reranker, Reranker)
    pairs = [(QUERY, d) for d in DOCS] + [("yes or no?", "1 0 Yes")]
    ids, (positive, negative) = reference(tok, pairs, None, length)
    assert reranker.inputs.encode([q for q, _ in pairs], [d for _, d in pairs], None).ids == ids
    want = reference_scores(model, ids, positive, negative)
    assert want.abs().max() > 0.5  # logits large enough for 1e-4 to mean something
    with mlp_rows(reranker.scorer.backbone) as rows:
        raw = torch.from_numpy(reranker.score(pairs, activation="none"))
    assert sum(rows["last"]) == len(pairs) < sum(rows["first"])  # the last layer computes the last tokens only
    torch.testing.assert_close(raw, want, atol=1e-4, rtol=0)
    alone = torch.from_numpy(reranker.score(pairs, activation="none", batch_tokens=1))  # one pair per batch
    torch.testing.assert_close(alone, raw, atol=1e-5, rtol=0)
    # sigmoid: Qwen3's card (softmax over [l_no, l_yes], the "yes" probability); bge's normalize=True
    prob = torch.from_numpy(reranker.score(pairs, activation="sigmoid"))
    two_way = torch.stack([torch.zeros_like(want), want], dim=1).softmax(dim=1)[:, 1]
    torch.testing.assert_close(prob, two_way, atol=1e-5, rtol=0)
    # ranking order identical to the reference's
    ranked = reranker.rank(QUERY, DOCS)
    assert [r["index"] for r in ranked] == torch.argsort(want[: len(DOCS)], descending=True, stable=True).tolist()


def test_default_activation_is_the_references_output(checkpoint):
    assert (T.Qwen3RerankerPairs.activation, T.MxbaiRerankV2Pairs.activation) == ("sigmoid", "none")
    assert T.BgeGemmaPairs.activation == "none"
    reranker, *_ = load_case(checkpoint, "qwen3_untied")
    assert reranker.activation == "sigmoid" and 0 < reranker.score([(QUERY, DOCS[0])])[0] < 1


def test_the_catalogs_activation_overrides_the_templates(checkpoint, monkeypatch):
    recipe = CASES["qwen3_untied"][3]
    monkeypatch.setitem(CATALOG, recipe, dataclasses.replace(CATALOG[recipe], activation="none"))
    reranker, *_ = load_case(checkpoint, "qwen3_untied")
    assert reranker.activation == "none"


@pytest.mark.parametrize("case", ["qwen3_tied", "qwen3_untied", "bge_gemma"])
def test_score_row_reads_the_tied_or_untied_head(checkpoint, case):
    model_cls, config_cls, extra, *_ = CASES[case]
    folder, model, tok = checkpoint(model_cls, config_cls, **extra)
    snap = read_snapshot(folder)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    head = model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(score_row(snap, yes, no), head[yes] - head[no], atol=0, rtol=0)
    torch.testing.assert_close(score_row(snap, yes, None), head[yes], atol=0, rtol=0)
    untied = not model.config.tie_word_embeddings
    assert untied == (not torch.equal(head, model.get_input_embeddings().weight.detach()))


def test_score_row_from_legacy_bin_weights(checkpoint):
    folder, model, tok = checkpoint(Qwen3ForCausalLM, Qwen3Config, tie_word_embeddings=False, head_dim=16)
    from_safetensors = score_row(read_snapshot(folder), 5, 7)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    torch.testing.assert_close(score_row(read_snapshot(folder), 5, 7), from_safetensors, atol=0, rtol=0)


def test_score_row_refuses_what_one_row_cannot_express(checkpoint):
    folder, model, tok = checkpoint(Qwen3ForCausalLM, Qwen3Config, tie_word_embeddings=False, head_dim=16)
    snap = read_snapshot(folder)
    with pytest.raises(UnsupportedConfig, match="final_logit_softcapping"):
        score_row(dataclasses.replace(snap, config=snap.config | {"final_logit_softcapping": 30.0}), 5, 7)
    with pytest.raises(SnapshotError, match="outside lm_head.weight's"):
        score_row(snap, 5, model.config.vocab_size)
    with pytest.raises(UnsupportedConfig, match="not a yes/no reranker backbone; supported"):
        score_row(dataclasses.replace(snap, config=snap.config | {"model_type": "bert"}), 5, 7)
    tied = read_snapshot(checkpoint(GemmaForCausalLM, GemmaConfig, head_dim=8)[0])  # saved without lm_head.weight
    with pytest.raises(SnapshotError, match=r"expected one tensor for lm_head.weight \(tie_word_embeddings false\)"):
        score_row(dataclasses.replace(tied, config=tied.config | {"tie_word_embeddings": False}), 5, 7)


def test_scorer_holds_one_row_not_the_lm_head(checkpoint):
    reranker, model, *_ = load_case(checkpoint, "qwen3_untied")
    vocab, hidden = model.config.vocab_size, model.config.hidden_size
    assert reranker.scorer.row.shape == (hidden,) and reranker.scorer.row.dtype == torch.float32
    wide = [n for n, t in reranker.scorer.state_dict().items() if t.shape[0] == vocab]
    assert wide == ["backbone.embed.tok.weight"]  # the input embedding only


# ---- templates


def test_template_strings_are_byte_exact():
    assert T.QWEN3_PREFIX == QWEN3_PREFIX and T.QWEN3_SUFFIX == QWEN3_SUFFIX
    assert T.QWEN3_BODY.format(instruction="I", query="Q", document="D") == "<Instruct>: I\n<Query>: Q\n<Document>: D"
    assert T.Qwen3RerankerPairs.default_instruction == QWEN3_DEFAULT
    assert (T.MXBAI_PREFIX, T.MXBAI_SUFFIX, T.MXBAI_TASK, T.MXBAI_SEP) == (MXBAI_PREFIX, MXBAI_SUFFIX, MXBAI_TASK, "\n")
    pieces = (T.MXBAI_INSTRUCTION.format(instruction="I"), T.MXBAI_QUERY.format(query="Q"))
    assert pieces + (T.MXBAI_DOCUMENT.format(document="D"),) == ("instruction: I", "query: Q", "document: D")
    assert T.BGE_GEMMA_PROMPT == BGE_PROMPT and T.BgeGemmaPairs.default_instruction == BGE_PROMPT
    assert (T.BGE_GEMMA_QUERY.format(query="Q"), T.BGE_GEMMA_PASSAGE.format(passage="P"), T.BGE_GEMMA_SEP) == (
        "A: Q",
        "B: P",
        "\n",
    )


@pytest.fixture
def tokenizer(tmp_path):
    write_tokenizer(tmp_path)
    return AutoTokenizer.from_pretrained(str(tmp_path))


@pytest.mark.parametrize(
    "template, instruction, text",
    [
        (T.Qwen3RerankerPairs, None, f"<Instruct>: {QWEN3_DEFAULT}\n<Query>: Q\n<Document>: D"),
        (T.Qwen3RerankerPairs, "Find code", "<Instruct>: Find code\n<Query>: Q\n<Document>: D"),
        (T.MxbaiRerankV2Pairs, None, "query: Q\ndocument: D\n"),
        (T.MxbaiRerankV2Pairs, "Find code", "instruction: Find code\nquery: Q\ndocument: D\n"),
        (T.BgeGemmaPairs, None, "<bos>A: Q\nB: D\n" + BGE_PROMPT),
        (T.BgeGemmaPairs, "Is B about A?", "<bos>A: Q\nB: D\nIs B about A?"),
    ],
)
def test_prompt_text_and_instruction(tokenizer, template, instruction, text):
    """The ids decode to the whole prompt: the template around the texts and the default or given instruction."""
    around = {
        T.Qwen3RerankerPairs: (QWEN3_PREFIX, QWEN3_SUFFIX),
        T.MxbaiRerankV2Pairs: (MXBAI_PREFIX, MXBAI_TASK + MXBAI_SUFFIX),
        T.BgeGemmaPairs: ("", ""),
    }
    text = around[template][0] + text + around[template][1]
    inputs = template(tokenizer, 1024)
    encoded = inputs.encode(["Q"], ["D"], instruction)
    assert tokenizer.decode(encoded.ids[0]) == text and encoded.truncated == 0 and encoded.type_ids is None


@pytest.mark.parametrize(
    "case, body, pairs",
    [
        ("qwen3_tied", 160, [(QUERY, LONG), (QUERY, "short")]),  # the instruction is in the body
        ("mxbai", 48, [(QUERY, LONG), (QUERY, "short")]),
        ("mxbai", 48, [(LONG, LONG), (QUERY, "short")]),  # the query cut to 3/4, then the document
        ("bge_gemma", 48, [(QUERY, LONG), (QUERY, "short")]),
        ("bge_gemma", 48, [(LONG, "short"), (QUERY, "short")]),
    ],
)
@pytest.mark.parametrize("side", ["right", "left"])
def test_truncation_keeps_the_template_and_warns_once(checkpoint, caplog, case, body, pairs, side):
    """max_seq_length counts the whole pair; the cut is the reference's at its own length argument, on the
    tokenizer's truncation_side."""
    model_cls, config_cls, extra, recipe, reference, _ = CASES[case]
    folder, model, tok = checkpoint(model_cls, config_cls, **extra)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"truncation_side": side}))
    tok = AutoTokenizer.from_pretrained(str(folder))
    probe = KINDS[CATALOG[recipe].reranker].template(tok, 1000)
    # the template's own tokens on top of the body (Qwen3's length is the whole pair, the others' the body)
    total = body + (len(probe.prefix + probe.suffix) if case.startswith("qwen3") else probe.max_length - probe.length)
    reranker = embzoo.load(folder, recipe=recipe, device="cpu", dtype="float32", max_seq_length=total)
    inputs = reranker.inputs
    assert inputs.max_length == total == reranker.max_seq_length
    ids, score_ids = reference(tok, pairs, None, inputs.length)
    got = inputs.encode([q for q, _ in pairs], [d for _, d in pairs], None)
    assert got.ids == ids and got.truncated == 1 and len(ids[0]) <= total
    assert ids[1] == reference(tok, pairs[1:], None, 10_000)[0][0]  # the short pair is untouched
    with caplog.at_level(logging.WARNING, logger="embzoo"):
        scores = reranker.score(pairs, activation="none")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and r.name.startswith("embzoo")]
    assert len(warnings) == 1 and f"1 of 2 (query, document) pairs were longer than {total}" in warnings[0].message
    assert f"from the {'start' if side == 'left' else 'end'})" in warnings[0].message
    torch.testing.assert_close(torch.from_numpy(scores), reference_scores(model, ids, *score_ids), atol=1e-4, rtol=0)


def test_qwen3_cut_keeps_prefix_and_suffix(tokenizer):
    inputs = T.Qwen3RerankerPairs(tokenizer, 300)
    ids = inputs.encode([QUERY], [LONG], None).ids[0]
    prefix, suffix = encode(tokenizer, QWEN3_PREFIX), encode(tokenizer, QWEN3_SUFFIX)
    assert len(ids) == 300 and ids[: len(prefix)] == prefix and ids[-len(suffix) :] == suffix


def test_instruction_rules(tokenizer, checkpoint):
    qwen = T.Qwen3RerankerPairs(tokenizer, 1024)
    assert qwen.encode(["Q"], ["D"], None) == qwen.encode(["Q"], ["D"], QWEN3_DEFAULT)
    mxbai = T.MxbaiRerankV2Pairs(tokenizer, 1024)
    assert mxbai.default_instruction == "" and mxbai.encode(["Q"], ["D"], None) == mxbai.encode(["Q"], ["D"], "")
    bge = T.BgeGemmaPairs(tokenizer, 1024)
    assert bge.encode(["Q"], ["D"], None) == bge.encode(["Q"], ["D"], BGE_PROMPT)
    reranker, *_ = load_case(checkpoint, "qwen3_tied")
    default, custom = reranker.score([(QUERY, DOCS[0])]), reranker.score([(QUERY, DOCS[0])], instruction="Find code")
    assert default[0] != custom[0]


@pytest.mark.parametrize("flag", ["load_in_8bit", "load_in_fp8"])
def test_quantized_loading_is_refused_with_what_it_supports(checkpoint, flag):
    with pytest.raises(ValueError, match="8/4-bit and FP8 loading quantize embedders and cross-encoders, not gen"):
        load_case(checkpoint, "qwen3_tied", **{flag: True})


def test_too_small_length_is_refused(tokenizer):
    with pytest.raises(ValueError, match="leaves .* tokens for the instruction, query and document"):
        T.Qwen3RerankerPairs(tokenizer, 40)
    with pytest.raises(ValueError, match="leaves 4 tokens for the query and passage"):
        T.BgeGemmaPairs(tokenizer, 4)


def test_catalog_recipes():
    rerankers = {e.hub_id: e for e in CATALOG.values() if e.reranker and e.reranker != "jina_v3"}
    assert set(rerankers) == {
        "Qwen/Qwen3-Reranker-0.6B",
        "Qwen/Qwen3-Reranker-4B",
        "Qwen/Qwen3-Reranker-8B",
        "mixedbread-ai/mxbai-rerank-base-v2",
        "mixedbread-ai/mxbai-rerank-large-v2",
        "BAAI/bge-reranker-v2-gemma",
    }
    assert all(KINDS[e.reranker].wrapper is Reranker for e in rerankers.values())
    # the references' own max_length defaults: the Qwen3 card 8192, MxbaiRerankV2 8192, the bge card's get_inputs 1024
    lengths = {e.reranker: e.max_seq_length for e in rerankers.values()}
    assert lengths == {"qwen3_reranker": 8192, "mxbai_rerank_v2": 8192, "bge_reranker_gemma": 1024}
    assert {e.hub_id for e in CATALOG.values() if e.reranker} - set(rerankers) == {"jinaai/jina-reranker-v3"}


@pytest.mark.parametrize("case", ["qwen3_tied", "qwen3_untied"])
def test_embzoo_folder_reloads_bit_exactly(checkpoint, case, tmp_path):
    from conftest import assert_round_trip

    model_cls, config_cls, extra, recipe, _, _ = CASES[case]
    folder, _, _ = checkpoint(model_cls, config_cls, **extra)
    pairs = [("what is rope?", "rotary position embeddings"), ("q", "a longer document about nothing")]
    assert_round_trip(folder, tmp_path / "converted", lambda r: r.score(pairs), recipe=recipe)

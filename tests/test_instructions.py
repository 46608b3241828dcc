"""Instruction-tuned embedders: byte-exact templates, encode(instruction=...), EOS appending, the three
ways an instruction is kept out of the pool, and catalog recipes applied to a local folder."""

import json

import numpy as np
import pytest
import torch
from conftest import TINY_QWEN3
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

import embzoo
from embzoo.catalog import lookup
from embzoo.tokenization import TextTokenizer

# the strings of FAMILIES.md §7 and §8, written out here (an independent copy, not the catalog's)
SPEC_PROMPTS = [
    (
        "Qwen/Qwen3-Embedding-0.6B",
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:",
    ),
    (
        "Alibaba-NLP/gte-Qwen2-7B-instruct",
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ",
    ),
    (
        "intfloat/e5-mistral-7b-instruct",
        "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery: ",
    ),
    ("nvidia/NV-Embed-v2", "Instruct: Given a question, retrieve passages that answer the question\nQuery: "),
    ("google/embeddinggemma-300m", "task: search result | query: "),
    (
        "BAAI/bge-multilingual-gemma2",
        "<instruct>Given a web search query, retrieve relevant passages that answer the query\n<query>",
    ),
]


@pytest.mark.parametrize("hub_id, query_prompt", SPEC_PROMPTS)
def test_query_prompts_are_byte_exact(hub_id, query_prompt):
    assert lookup(hub_id).prompts["query"] == query_prompt


def test_templates_and_document_prompts():
    assert lookup("Qwen/Qwen3-Embedding-8B").instruction_template == "Instruct: {instruction}\nQuery:"
    assert lookup("Salesforce/SFR-Embedding-Mistral").instruction_template == "Instruct: {instruction}\nQuery: "
    assert lookup("google/embeddinggemma-300m").prompts["document"] == "title: none | text: "
    assert lookup("BAAI/bge-multilingual-gemma2").instruction_template == "<instruct>{instruction}\n<query>"
    llm2vec = lookup("McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised")
    assert (llm2vec.instruction_mask, llm2vec.config_overrides, llm2vec.normalize) == (
        "text_tokens",
        {"is_causal": False},
        False,
    )
    assert lookup("nvidia/NV-Embed-v2").instruction_mask == "prompt_tokens"
    assert lookup("Alibaba-NLP/gte-Qwen2-1.5B-instruct").config_overrides == {"is_causal": False}
    # Qwen's eos_token is <|im_end|>, but its embedders end inputs with <|endoftext|> (FAMILIES.md §7)
    for hub_id in ("Qwen/Qwen3-Embedding-0.6B", "Alibaba-NLP/gte-Qwen2-7B-instruct"):
        assert lookup(hub_id).end_token == "<|endoftext|>"
    for hub_id in ("intfloat/e5-mistral-7b-instruct", "nvidia/NV-Embed-v2"):
        assert lookup(hub_id).end_token == "</s>"
    assert lookup("BAAI/bge-multilingual-gemma2").end_token == ""


def word_tokenizer(template_eos: bool) -> Tokenizer:
    """A whitespace word-level tokenizer: <s> text [</s> when template_eos]."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {w: i + 3 for i, w in enumerate("abcdefg")}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    single = "<s> $A </s>" if template_eos else "<s> $A"
    tok.post_processor = processors.TemplateProcessing(single=single, special_tokens=[("<s>", 1), ("</s>", 2)])
    return tok


def test_eos_is_appended_after_truncating_to_make_room():
    tok = TextTokenizer(word_tokenizer(False), max_length=4, special_ids={1, 2}, end_id=2)
    ids, cut = tok.encode(["a b", "a b c d e"])
    assert ids == [[1, 3, 4, 2], [1, 3, 4, 2]] and cut == 1


def test_eos_is_not_doubled_when_the_template_appends_it():
    tok = TextTokenizer(word_tokenizer(True), max_length=4, special_ids={1, 2}, end_id=2)
    assert tok.end_id is None
    assert tok.encode(["a", "a b c d"]) == ([[1, 3, 2], [1, 3, 4, 2]], 1)


def test_token_counts_exclude_special_tokens():
    tok = TextTokenizer(word_tokenizer(True), max_length=8, special_ids={1, 2})
    assert tok.token_counts(["a b c", "", "d"]) == [3, 0, 1]


ENDOFTEXT = 30522  # the id <|endoftext|> gets in the fixture's tokenizer


@pytest.fixture
def qwen3_folder(make_checkpoint):
    """A tiny Qwen3 checkpoint with MiniLM's tokenizer (its template ends inputs with [SEP], 102) plus the
    special token <|endoftext|>; its eos_token is [MASK] (103), as Qwen's names <|im_end|>, not the end token."""
    folder, _ = make_checkpoint(Qwen3Model, Qwen3Config(**TINY_QWEN3 | {"vocab_size": 30528}))
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg | {"eos_token": "[MASK]"}))
    return folder


def test_end_token_is_the_recipes_not_the_tokenizers_eos(qwen3_folder):
    m = embzoo.load(qwen3_folder, recipe="Qwen/Qwen3-Embedding-0.6B")
    assert m.tokenizer.end_id == ENDOFTEXT and m.tokenizer.encode(["hello"])[0][0][-2:] == [102, ENDOFTEXT]
    tok = TextTokenizer.from_folder(qwen3_folder, 16, end_token="[SEP]")  # the template ends with it already
    assert tok.end_id is None and tok.encode(["hello"])[0][0][-1] == 102
    with pytest.raises(ValueError, match="end with '<nope>', which its tokenizer lacks"):
        TextTokenizer.from_folder(qwen3_folder, 16, end_token="<nope>")


def test_recipe_applies_a_catalog_entry_to_a_local_folder(qwen3_folder):
    m = embzoo.load(qwen3_folder, recipe="Qwen/Qwen3-Embedding-0.6B", config_overrides={"is_causal": False})
    assert m.model.backbone.cfg.causal is False
    assert m.model.pooler.modes == ("lasttoken",) and m.normalize
    assert m.instruction_template == "Instruct: {instruction}\nQuery:"
    plain = embzoo.load(qwen3_folder)
    assert plain.model.backbone.cfg.causal is True and plain.tokenizer.end_id is None
    qwen2 = embzoo.load(qwen3_folder, recipe="Alibaba-NLP/gte-Qwen2-1.5B-instruct")
    assert qwen2.model.backbone.cfg.causal is False  # the recipe's own config override
    forced = embzoo.load(qwen3_folder, config_overrides={"is_causal": False})
    assert forced.model.backbone.cfg.causal is False
    with pytest.raises(ValueError, match="not in the catalog"):
        embzoo.load(qwen3_folder, recipe="nobody/nothing")


def test_instruction_fills_the_template(qwen3_folder):
    m = embzoo.load(qwen3_folder, recipe="Qwen/Qwen3-Embedding-0.6B")
    texts = ["what is rope?", "b"]
    by_instruction = m.encode(texts, instruction="Find code")
    by_prompt = m.encode(texts, prompt="Instruct: Find code\nQuery:")
    np.testing.assert_array_equal(by_instruction, by_prompt)
    assert not np.allclose(by_instruction, m.encode(texts, prompt_name="query"))
    with pytest.raises(ValueError, match="at most one"):
        m.encode(texts, instruction="x", prompt_name="query")
    with pytest.raises(ValueError, match="takes no instruction"):
        embzoo.load(qwen3_folder).encode(texts, instruction="x")


def masked_mean(states: np.ndarray, skip: int) -> np.ndarray:
    return states[skip:].mean(axis=0)


@pytest.mark.parametrize("mask", ["prompt", "prompt_tokens", "text_tokens"])
def test_instruction_tokens_kept_out_of_the_mean(qwen3_folder, mask):
    m = embzoo.load(qwen3_folder, config_overrides={"is_causal": False})
    m.model.pooler.include_prompt = False
    m.model.pooler.modes = ("mean",)
    m.instruction_mask = mask
    prompt, texts = "represent this: ", ["a short text", "another, longer text with words", "x"]
    vectors = m.encode(texts, prompt=prompt, normalize=False)
    states = m.encode(texts, prompt=prompt, output="tokens")
    hf = m.tokenizer.backend
    for text, vector, state in zip(texts, vectors, states, strict=True):
        if mask == "prompt":  # sentence-transformers: the prompt's tokens with [CLS], not its [SEP]
            skip = len(hf.encode(prompt).ids) - 1
        elif mask == "prompt_tokens":  # NV-Embed: pool_mask[:len(tokenize(instruction))] = 0
            skip = len(hf.encode(prompt, add_special_tokens=False).ids)
        else:  # LLM2Vec: embed_mask covers the last len(tokenize(text)) positions
            skip = len(state) - len(hf.encode(text, add_special_tokens=False).ids)
        np.testing.assert_allclose(vector, masked_mean(state, skip), atol=1e-5)
    if mask == "text_tokens":  # without a prompt, the text's tokens alone are pooled too ([CLS] is not)
        vector, state = m.encode("a b c", normalize=False), m.encode("a b c", output="tokens")
        np.testing.assert_allclose(vector, state[len(state) - 3 :].mean(axis=0), atol=1e-5)


def test_last_token_pooling_reads_the_appended_eos(qwen3_folder):
    m = embzoo.load(qwen3_folder, recipe="Qwen/Qwen3-Embedding-0.6B", dtype=torch.float32)
    states = m.encode(["hello there", "x"], output="tokens")
    vectors = m.encode(["hello there", "x"], normalize=False)
    for v, s in zip(vectors, states, strict=True):
        np.testing.assert_allclose(v, s[-1], atol=1e-6)


def llm2vec_reference_text(instruction: str, text: str, wrap: str, suffix: str) -> tuple[str, str]:
    """llm2vec's input and pooled part: _convert_to_str, prepare_for_tokenization, then tokenize()'s split."""
    joined = f"{instruction.strip()} !@#$%^&*(){text}" if instruction else f"!@#$%^&*(){text}"
    prepared = wrap + joined.strip() + suffix
    before, after = prepared.split("!@#$%^&*()")
    return before + after, after


LLM2VEC_QUERY = "Given a web search query, retrieve relevant passages that answer the query:"  # llm2vec README


@pytest.mark.parametrize("instruction", ["", "Retrieve duplicate questions from StackOverflow forum"])
def test_llm2vec_recipe_matches_its_input_construction(qwen3_folder, instruction):
    entry = lookup("McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised")
    text = "how do rotary embeddings work"
    full, pooled = llm2vec_reference_text(instruction, text, "[INST] ", " [/INST]")
    prompt = entry.instruction_template.format(instruction=instruction) if instruction else entry.prompts["document"]
    assert prompt + text + entry.text_suffix == full
    assert text + entry.text_suffix == pooled
    default, _ = llm2vec_reference_text(LLM2VEC_QUERY, text, "[INST] ", " [/INST]")
    assert entry.prompts["query"] + text + entry.text_suffix == default
    m = embzoo.load(qwen3_folder, recipe=entry.hub_id)
    vector = m.encode(text, prompt=prompt)
    hf = m.tokenizer.backend
    states = m.encode(text, prompt=prompt, output="tokens")
    assert len(states) == len(hf.encode(full).ids)
    np.testing.assert_allclose(
        vector, states[-len(hf.encode(pooled, add_special_tokens=False).ids) :].mean(0), atol=1e-5
    )
    if not instruction:  # llm2vec.encode wraps a plain text too: no prompt given means the document's
        np.testing.assert_allclose(m.encode(text), vector, atol=1e-6)


def test_a_decoder_without_recipe_says_how_to_give_one(qwen3_folder, caplog):
    with caplog.at_level("WARNING", logger="embzoo.loading"):
        embzoo.load(qwen3_folder)
    assert "no catalog recipe for this llama model" in caplog.text and "recipe='<hub id>'" in caplog.text
    assert "generative reranker" not in caplog.text  # a Qwen3Model, not a causal LM
    caplog.clear()
    with caplog.at_level("WARNING", logger="embzoo.loading"):
        embzoo.load(qwen3_folder, recipe="Qwen/Qwen3-Embedding-0.6B")
    assert "no catalog recipe" not in caplog.text


def test_a_causal_lm_without_recipe_names_the_reranker_recipes(make_checkpoint, caplog):
    folder, _ = make_checkpoint(Qwen3ForCausalLM, Qwen3Config(**TINY_QWEN3 | {"vocab_size": 30528}))
    with caplog.at_level("WARNING", logger="embzoo.loading"):
        embzoo.load(folder)
    for recipe in ("Qwen/Qwen3-Reranker-0.6B", "mixedbread-ai/mxbai-rerank-base-v2", "BAAI/bge-reranker-v2-gemma"):
        assert recipe in caplog.text


def test_a_recipe_without_a_model_is_refused():
    with pytest.raises(ValueError, match="pass its folder too"):
        embzoo.load(recipe="Qwen/Qwen3-Reranker-0.6B")


def test_embzoo_folder_keeps_its_recipe(qwen3_folder, tmp_path):
    from conftest import assert_round_trip

    run = lambda m: m.encode(["hello"], instruction="find it")  # noqa: E731  (the template comes from the recipe)
    assert_round_trip(qwen3_folder, tmp_path / "converted", run, recipe="Qwen/Qwen3-Embedding-0.6B")

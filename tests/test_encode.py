"""Embedder.encode on tiny sentence-transformers folders: every pooling mode, Dense, prompts,
Matryoshka dimensions and quantized precisions, each against sentence-transformers."""

import json

import numpy as np
import pytest
import torch
from conftest import mlp_rows, write_st_layout
from safetensors.torch import save_file
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import quantize_embeddings
from transformers import BertConfig, BertModel

import embzoo
from embzoo.conversion.export import export_sentence_transformers

TINY = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
TEXTS = ["hello world", "", "a longer sentence with several more words in it", "ok", "naïve café"]


def tiny_folder(make_checkpoint, pooling, normalize=False, dense=None, **st_config):
    folder, _ = make_checkpoint(BertModel, TINY)
    write_st_layout(folder, {"embedding_dimension": 32} | pooling, normalize, 64, **st_config)
    if dense is not None:
        modules = json.loads((folder / "modules.json").read_text())
        modules.insert(2, {"path": "2_Dense", "type": "sentence_transformers.models.Dense"})
        modules = [m | {"idx": i, "name": str(i)} for i, m in enumerate(modules)]
        (folder / "modules.json").write_text(json.dumps(modules))
        (folder / "2_Dense").mkdir()
        out = dense["out_features"]
        cfg = {
            "in_features": 32,
            "out_features": out,
            "bias": True,
            "activation_function": dense["activation"],
        }
        (folder / "2_Dense" / "config.json").write_text(json.dumps(cfg))
        torch.manual_seed(3)
        save_file(
            {"linear.weight": torch.randn(out, 32) * 0.2, "linear.bias": torch.randn(out) * 0.1},
            str(folder / "2_Dense" / "model.safetensors"),
        )
    return folder


def both(folder):
    return embzoo.load(folder, device="cpu"), SentenceTransformer(str(folder), device="cpu")


POOLINGS = [
    {"pooling_mode": "cls"},
    {"pooling_mode": "mean"},
    {"pooling_mode": "max"},
    {"pooling_mode": "lasttoken"},
    {"pooling_mode": "weightedmean"},
    {"pooling_mode": "mean_sqrt_len_tokens"},
    {"pooling_mode": ["cls", "mean", "max"]},
    {"pooling_mode": ["lasttoken", "cls"]},
    {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True},
]


def single_token_rows(model: embzoo.Embedder) -> int:
    """Tokens per text the last layer computes when only pooled tokens are (cls / last token: one per mode), else 0."""
    modes = model.model.pooler.modes
    return len(modes) if set(modes) <= {"cls", "lasttoken"} else 0


@pytest.mark.parametrize("pooling", POOLINGS, ids=lambda p: json.dumps(p))
def test_pooling_modes_match_sentence_transformers(make_checkpoint, pooling):
    ours, ref = both(tiny_folder(make_checkpoint, pooling))
    with mlp_rows(ours.model.backbone) as rows:
        np.testing.assert_allclose(ours.encode(TEXTS), ref.encode(TEXTS), atol=1e-5, rtol=0)
    # the last layer runs its attention output and MLP for the pooled tokens only, when they are single tokens
    per_text = single_token_rows(ours)
    if per_text:
        assert sum(rows["last"]) == per_text * len(TEXTS) < sum(rows["first"])
    else:
        assert rows["last"] == rows["first"]


@pytest.mark.parametrize("mode", ["mean", "weightedmean", "cls", "max"])
def test_include_prompt_false_matches_sentence_transformers(make_checkpoint, mode):
    pooling = {"pooling_mode": mode, "include_prompt": False}
    ours, ref = both(tiny_folder(make_checkpoint, pooling, prompts={"query": "search query: "}))
    got = ours.encode(TEXTS, prompt_name="query")
    np.testing.assert_allclose(got, ref.encode(TEXTS, prompt_name="query"), atol=1e-5, rtol=0)


def test_token_outputs_keep_every_token_in_the_last_layer(make_checkpoint):
    ours, ref = both(tiny_folder(make_checkpoint, {"pooling_mode": "cls"}))
    with mlp_rows(ours.model.backbone) as rows:
        both_outputs = ours.encode(TEXTS, output=["sentence", "tokens"])
    assert rows["last"] == rows["first"]
    np.testing.assert_allclose(both_outputs["sentence"], ours.encode(TEXTS), atol=1e-6, rtol=0)
    want = ref.encode(TEXTS, output_value="token_embeddings")
    for got, theirs in zip(both_outputs["tokens"], want, strict=True):
        np.testing.assert_allclose(got, theirs.numpy(), atol=1e-5, rtol=0)


def test_dense_and_normalize_match_sentence_transformers(make_checkpoint):
    dense = {"out_features": 12, "activation": "torch.nn.modules.activation.Tanh"}
    ours, ref = both(tiny_folder(make_checkpoint, {"pooling_mode": "mean"}, normalize=True, dense=dense))
    assert ours.dimension == 12
    np.testing.assert_allclose(ours.encode(TEXTS), ref.encode(TEXTS), atol=1e-5, rtol=0)


def test_default_prompt_name_matches_sentence_transformers(make_checkpoint):
    folder = tiny_folder(
        make_checkpoint,
        {"pooling_mode": "mean"},
        prompts={"query": "query: ", "doc": ""},
        default_prompt_name="query",
    )
    ours, ref = both(folder)
    np.testing.assert_allclose(ours.encode(TEXTS), ref.encode(TEXTS), atol=1e-5, rtol=0)
    np.testing.assert_allclose(
        ours.encode(TEXTS, prompt_name="doc"), ref.encode(TEXTS, prompt_name="doc"), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize(
    ("prompts", "document"),
    [
        ({"query": "query: ", "passage": "passage: "}, "passage: "),  # e5's names
        ({"corpus": "c: ", "query": "q: "}, "c: "),
        ({"corpus": "c: ", "passage": "p: ", "document": "d: "}, "d: "),
        ({"doc": "x: "}, ""),
    ],
)
def test_encode_query_and_document_take_the_roles_prompt(make_checkpoint, prompts, document):
    """sentence-transformers 5's lookup: query → "query"; document → "document", else "passage", else "corpus"."""
    ours = embzoo.load(tiny_folder(make_checkpoint, {"pooling_mode": "mean"}, prompts=prompts), device="cpu")
    np.testing.assert_array_equal(ours.encode_document(TEXTS), ours.encode(TEXTS, prompt=document))
    np.testing.assert_array_equal(ours.encode_query(TEXTS), ours.encode(TEXTS, prompt=prompts.get("query", "")))
    np.testing.assert_array_equal(ours.encode_document(TEXTS, prompt="y: "), ours.encode(TEXTS, prompt="y: "))


@pytest.fixture
def mean_model(make_checkpoint):
    return embzoo.load(tiny_folder(make_checkpoint, {"pooling_mode": "mean"}, normalize=True), device="cpu")


def test_dimensions_truncate_then_normalize(mean_model):
    full = mean_model.encode(TEXTS, normalize=False)
    got = mean_model.encode(TEXTS, dimensions=8)
    want = full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_allclose(mean_model.encode(TEXTS, dimensions=8, normalize=False), full[:, :8], atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_precisions_match_sentence_transformers_quantization(mean_model, precision):
    calibration = [f"calibration text number {i} about {w}" for i, w in enumerate("abcdefghijklmnop")]
    ranges = mean_model.calibrate(calibration, dimensions=16)
    floats = mean_model.encode(TEXTS, dimensions=16)
    got = mean_model.encode(TEXTS, dimensions=16, precision=precision)
    want = quantize_embeddings(floats, precision=precision, ranges=ranges)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_int8_never_derives_ranges_from_the_batch(mean_model):
    with pytest.raises(ValueError, match="calibrate"):
        mean_model.encode(TEXTS, precision="int8")
    explicit = np.stack([np.full(32, -1.0), np.full(32, 1.0)])
    alone = mean_model.encode(TEXTS[:1], precision="int8", int8_ranges=explicit)
    batch = mean_model.encode(TEXTS, precision="int8", int8_ranges=explicit)
    np.testing.assert_array_equal(alone[0], batch[0])
    with pytest.raises(ValueError, match=r"expected \(2, 8\)"):
        mean_model.encode(TEXTS, precision="int8", int8_ranges=explicit, dimensions=8)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"prompt_name": "query"}, ValueError, r"unknown prompt_name 'query'; this model's prompts are \[\]"),
        ({"prompt": "x", "prompt_name": "y"}, ValueError, "at most one of prompt, prompt_name and instruction"),
        ({"dimensions": 33}, ValueError, r"dimensions must be in 1\.\.32"),
        ({"precision": "int4"}, ValueError, "allowed"),
        ({"output": "sparse"}, ValueError, r"gives \('sentence', 'tokens'\)"),
        ({"output": ["sentence", "sentence"]}, ValueError, "distinct names"),
        ({"output": "tokens", "dimensions": 8}, ValueError, "sentence output only"),
        ({"max_active_dims": 4}, ValueError, "applies to the sparse output"),
    ],
)
def test_bad_arguments_name_the_fix(mean_model, kwargs, error, message):
    with pytest.raises(error, match=message):
        mean_model.encode(TEXTS, **kwargs)


@pytest.mark.parametrize("bad", [["ok", 3], [None], [b"bytes"]])
def test_non_str_input_is_rejected(mean_model, bad):
    with pytest.raises(TypeError, match="item"):
        mean_model.encode(bad)


def test_truncation_warns_once_per_call_with_the_count(mean_model, caplog):
    texts = ["word " * 100, "short", "word " * 70]
    for _ in range(2):  # the same warning again on the next call: never silent
        caplog.clear()
        mean_model.encode(texts, batch_tokens=70)
        records = [r for r in caplog.records if "truncated" in r.getMessage()]
        assert len(records) == 1 and records[0].levelname == "WARNING"
        assert "2 of 3 inputs were longer than 64 tokens" in records[0].getMessage()


def test_truncation_cuts_on_the_tokenizers_truncation_side(make_checkpoint):
    """A tokenizer_config.json with truncation_side "left" keeps the end of an over-long text, as transformers'
    tokenizer (and so sentence-transformers) does."""
    folder = tiny_folder(make_checkpoint, {"pooling_mode": "mean"})
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"truncation_side": "left"}))
    texts = ["alpha " * 40 + "beta " * 40, "short"]
    ours, theirs = both(folder)
    np.testing.assert_allclose(ours.encode(texts), theirs.encode(texts), atol=1e-5)
    assert ours.tokenize(texts).ids == theirs.tokenizer(texts, truncation=True, max_length=64)["input_ids"]


def test_do_lower_case_lowercases_as_sentence_transformers_does(make_checkpoint):
    """do_lower_case lowercases inside the tokenizer, ahead of its normalizer (sentence-transformers 6): a special
    token written in a text stays one token, which lowercasing the string first would break."""
    folder = tiny_folder(make_checkpoint, {"pooling_mode": "mean"})
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 64, "do_lower_case": True}))
    texts = ["Hello [MASK] World", "ΟΔΟΣ ΚΑΛΟΣ", "MiXeD Case [SEP] text"]
    ours, theirs = both(folder)
    assert ours.tokenize(texts).ids == theirs.tokenizer(texts)["input_ids"]
    np.testing.assert_allclose(ours.encode(texts), theirs.encode(texts), atol=1e-5)


@pytest.mark.parametrize("normalize", [True, False])
def test_stored_truncate_dim_cuts_as_sentence_transformers_does(make_checkpoint, normalize, tmp_path):
    """config_sentence_transformers.json's truncate_dim: the default output is cut after the Normalize module, as
    sentence-transformers cuts it; dimensions= and normalize=True still apply; an export keeps it."""
    folder = tiny_folder(make_checkpoint, {"pooling_mode": "mean"}, normalize=normalize, truncate_dim=12)
    ours, theirs = both(folder)
    assert ours.dimension == theirs.get_embedding_dimension() == 12
    for kwargs in ({}, {"normalize_embeddings": True}):
        ours_kw = {"normalize": True} if kwargs else {}
        np.testing.assert_allclose(ours.encode(TEXTS, **ours_kw), theirs.encode(TEXTS, **kwargs), atol=1e-5)
    wider = theirs.encode(TEXTS, truncate_dim=20, normalize_embeddings=normalize)  # dimensions= cuts, then normalizes
    np.testing.assert_allclose(ours.encode(TEXTS, dimensions=20), wider, atol=1e-5)
    assert ours.encode([]).shape == (0, 12)
    np.testing.assert_allclose(ours.to_sentence_transformer().encode(TEXTS), theirs.encode(TEXTS), atol=1e-5)
    export_sentence_transformers(folder, tmp_path / "copy")
    assert embzoo.load(tmp_path / "copy", device="cpu").truncate_dim == 12


def test_a_text_without_tokens_is_refused_with_what_to_do(make_checkpoint):
    """A tokenizer that adds no special tokens turns "" into no token at all: a clear error, not a failed pack."""
    folder = tiny_folder(make_checkpoint, {"pooling_mode": "mean"})
    spec = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps(spec | {"post_processor": None}))
    config = json.loads((folder / "tokenizer_config.json").read_text())  # BertTokenizer would rebuild the template
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"tokenizer_class": "PreTrainedTokenizerFast"}))
    model = embzoo.load(folder, device="cpu")
    assert model.encode(["ok"]).shape == (1, 32)
    with pytest.raises(ValueError, match=r"1 text\(s\) give no tokens, e.g. '': .* drop or replace"):
        model.encode(["ok", ""])


def test_single_text_token_output_and_calibrate_arguments(mean_model):
    states = mean_model.encode("hello world", output="tokens")
    assert isinstance(states, np.ndarray) and states.shape == (4, 32)
    ranges = mean_model.calibrate(TEXTS, dimensions=8)
    assert ranges.shape == (2, 8)
    q = mean_model.encode(TEXTS, dimensions=8, precision="int8", convert_to_tensor=True)
    assert q.dtype == torch.int8 and q.device == mean_model.device


def test_matryoshka_layer_norm_before_truncation(mean_model):
    """nomic-embed-text-v1.5: non-affine layer norm over the full vector, then truncate, then normalize."""
    full = mean_model.encode(TEXTS, normalize=False, convert_to_tensor=True)
    mean_model.matryoshka_layer_norm = True
    got = mean_model.encode(TEXTS, dimensions=8, normalize=False, convert_to_tensor=True)
    want = torch.nn.functional.layer_norm(full, (32,))[:, :8]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(mean_model.encode(TEXTS, normalize=False, convert_to_tensor=True), full)


def test_score_and_rank_use_cosine_for_sentence_vectors(make_checkpoint):
    m = embzoo.load(tiny_folder(make_checkpoint, {"pooling_mode": "mean"}), device="cpu")
    assert not m.normalize  # raw mean vectors: score() must normalize them itself
    pairs = [("hello world", TEXTS[2]), ("ok", "naïve café")]
    v = m.encode([q for q, _ in pairs] + [d for _, d in pairs])
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert np.allclose(m.score(pairs), (v[:2] * v[2:]).sum(1), atol=1e-6)
    ranking = m.rank("hello world", TEXTS, top_k=2)
    assert [r["index"] for r in ranking][0] == 0 and len(ranking) == 2

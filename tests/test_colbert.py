"""ColBERT (PyLate and Stanford layouts) against a reference written from PyLate's tokenize/encode on transformers'
BertModel: the role marker inserted after [CLS], queries padded with [MASK] to query_length (unattended unless
attend_to_expansion_tokens), every query vector kept, document vectors without the punctuation skiplist, a
bias-free projection, L2-normalized; MaxSim summed over query tokens."""

import json
import string

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertConfig, BertModel, ModernBertConfig, ModernBertModel

import embzoo
from embzoo.conversion.inspect import inspect_checkpoint
from embzoo.conversion.snapshot import SnapshotError

TINY = dict(vocab_size=30524, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
# GTE-ModernColBERT's backbone in small: local layers with a window wide enough for every query token to see a key
MODERN = ModernBertConfig(
    **TINY | dict(num_hidden_layers=3, intermediate_size=40),
    local_attention=32,
    global_attn_every_n_layers=2,
    global_rope_theta=1000.0,
    local_rope_theta=50.0,
    pad_token_id=0,
    cls_token_id=101,
    sep_token_id=102,
)
QUERIES = ["what is late interaction?", "", "a query long enough to be cut at the query length of twelve tokens"]
DOCS = ["ColBERT scores each query token against every document token, then sums the maxima.", "ok", ""]
DIM = 16
SETTINGS = {
    "query_prefix": "[Q] ",
    "document_prefix": "[D] ",
    "query_length": 12,
    "document_length": 20,
    "attend_to_expansion_tokens": False,
    "skiplist_words": list(string.punctuation),
    "do_query_expansion": True,
}


def bpe_tokenizer(folder):
    """Replace the folder's tokenizer by a small byte-level BPE one (GTE-ModernColBERT's kind: a leading space
    changes the tokens), with BERT's special tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(QUERIES + DOCS + ["hello world, what is it?"] * 3, trainer)
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (folder / f).unlink(missing_ok=True)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )
    fast.save_pretrained(folder)


def add_markers(folder):
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_tokens(["[Q] ", "[D] "])  # as PyLate does before saving: ids 30522 and 30523
    tok.save_pretrained(folder)


def pylate_folder(make_checkpoint, name="colbert", backbone=None, bpe=False, **settings):
    folder, model = make_checkpoint(*(backbone or (BertModel, BertConfig(**TINY))), name=name, noise=0.3)
    if bpe:
        bpe_tokenizer(folder)
    add_markers(folder)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Dense", "type": "pylate.models.Dense.Dense"},
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 19, "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps(SETTINGS | settings))
    (folder / "1_Dense").mkdir()
    dense = {"in_features": 32, "out_features": DIM, "bias": False}
    (folder / "1_Dense" / "config.json").write_text(
        json.dumps(dense | {"activation_function": "torch.nn.modules.linear.Identity", "use_residual": False})
    )
    torch.manual_seed(2)
    weight = torch.randn(DIM, 32) * 0.3
    save_file({"linear.weight": weight}, folder / "1_Dense" / "model.safetensors")
    return folder, model, weight


def stanford_folder(make_checkpoint, metadata):
    folder, model = make_checkpoint(BertModel, BertConfig(**TINY), name="stanford", noise=0.3)
    torch.manual_seed(2)
    weight = torch.randn(DIM, 32) * 0.3
    state = {f"bert.{k}": v.contiguous() for k, v in model.state_dict().items()}
    (folder / "model.safetensors").unlink()
    save_file(state | {"linear.weight": weight}, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"architectures": ["HF_ColBERT"]}))
    (folder / "artifact.metadata").write_text(json.dumps(metadata))
    return folder, model, weight


def pylate_reference(folder, model, weight, texts, is_query, settings):
    """PyLate's ColBERT.tokenize + encode, per text (no padding between texts)."""
    tok = AutoTokenizer.from_pretrained(folder)
    length = settings["query_length"] if is_query else settings["document_length"]
    marker = tok.convert_tokens_to_ids(settings["query_prefix" if is_query else "document_prefix"])
    skip = {tok.convert_tokens_to_ids(w) for w in settings["skiplist_words"]}
    expand = is_query and settings["do_query_expansion"]
    out = []
    with torch.no_grad():
        for text in texts:  # PyLate tokenizes through sentence-transformers 5's Transformer, which strips
            ids = tok(text.strip(), truncation=True, max_length=length - 1)["input_ids"]
            ids = ids[:1] + [marker] + ids[1:]
            mask = [1] * len(ids)
            if expand:
                pad = length - len(ids)
                ids, mask = ids + [tok.mask_token_id] * pad, mask + [int(settings["attend_to_expansion_tokens"])] * pad
            h = model(input_ids=torch.tensor([ids]), attention_mask=torch.tensor([mask])).last_hidden_state[0]
            vectors = h @ weight.T
            keep = torch.ones(len(ids), dtype=torch.bool) if is_query else torch.tensor([i not in skip for i in ids])
            out.append(F.normalize(vectors[keep], p=2, dim=1))
    return out


def assert_vectors(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref, strict=True):
        assert a.shape == tuple(b.shape), (a.shape, b.shape)
        assert np.abs(a - b.numpy()).max() < 1e-5


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"attend_to_expansion_tokens": True},
        {"do_query_expansion": False},
        {"query_prefix": "[unused0]", "document_prefix": "[unused1]"},
    ],
)
def test_pylate_colbert_matches_reference(make_checkpoint, settings):
    folder, model, weight = pylate_folder(make_checkpoint, **settings)
    m = embzoo.load(folder)
    assert m.model.outputs == ("multivector", "tokens") and m.dimension == DIM and m.max_seq_length == 20
    full = SETTINGS | settings
    assert_vectors(m.encode_query(QUERIES), pylate_reference(folder, model, weight, QUERIES, True, full))
    assert_vectors(m.encode_document(DOCS), pylate_reference(folder, model, weight, DOCS, False, full))
    assert_vectors(m.encode(DOCS, prompt_name="document"), pylate_reference(folder, model, weight, DOCS, False, full))
    assert_vectors(m.encode(QUERIES, is_query=True), pylate_reference(folder, model, weight, QUERIES, True, full))


def test_pylate_folder_without_settings_takes_pylate_defaults(make_checkpoint):
    folder, model, weight = pylate_folder(make_checkpoint)
    (folder / "config_sentence_transformers.json").unlink()  # Transformer → Dense alone: still ColBERT
    m = embzoo.load(folder)
    defaults = SETTINGS | {"query_length": 32, "document_length": 180}
    assert m.model.outputs[0] == "multivector" and m.max_seq_length == 180
    assert_vectors(m.encode_query(QUERIES), pylate_reference(folder, model, weight, QUERIES, True, defaults))
    assert_vectors(m.encode_document(DOCS), pylate_reference(folder, model, weight, DOCS, False, defaults))


def test_pylate_colbert_matches_sentence_transformers_multi_vector_encoder(make_checkpoint):
    from sentence_transformers import MultiVectorEncoder  # an independent loader of PyLate folders

    folder, _, _ = pylate_folder(make_checkpoint)
    m = embzoo.load(folder)
    st = MultiVectorEncoder(str(folder), device="cpu")
    assert_vectors(m.encode_query(QUERIES), [torch.as_tensor(v) for v in st.encode_query(QUERIES)])
    assert_vectors(m.encode_document(DOCS), [torch.as_tensor(v) for v in st.encode_document(DOCS)])


def test_modernbert_colbert_matches_reference(make_checkpoint):
    settings = {"document_length": 24, "do_query_expansion": False}  # GTE-ModernColBERT's own setting
    for expansion in (settings, {}):
        folder, model, weight = pylate_folder(
            make_checkpoint, name=f"modern{len(expansion)}", backbone=(ModernBertModel, MODERN), **expansion
        )
        m = embzoo.load(folder)
        full = SETTINGS | expansion
        assert_vectors(m.encode_query(QUERIES), pylate_reference(folder, model, weight, QUERIES, True, full))
        assert_vectors(m.encode_document(DOCS), pylate_reference(folder, model, weight, DOCS, False, full))


def test_texts_are_stripped_as_pylate_does(make_checkpoint):
    folder, model, weight = pylate_folder(make_checkpoint, bpe=True)
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok(" what is it ")["input_ids"] != tok("what is it")["input_ids"]  # the space matters to this tokenizer
    m = embzoo.load(folder)
    texts = [" what is it ", "hello world, what is it?\n"]
    assert_vectors(m.encode_query(texts), pylate_reference(folder, model, weight, texts, True, SETTINGS))
    assert_vectors(m.encode_document(texts), pylate_reference(folder, model, weight, texts, False, SETTINGS))


def test_stanford_colbert_matches_reference(make_checkpoint):
    metadata = {
        "query_maxlen": 12,
        "doc_maxlen": 20,
        "attend_to_mask_tokens": False,
        "dim": DIM,
        "similarity": "cosine",
    }
    folder, model, weight = stanford_folder(make_checkpoint, metadata)
    m = embzoo.load(folder)
    stanford = SETTINGS | {"query_prefix": "[unused0]", "document_prefix": "[unused1]"}
    assert_vectors(m.encode_query(QUERIES), pylate_reference(folder, model, weight, QUERIES, True, stanford))
    assert_vectors(m.encode_document(DOCS), pylate_reference(folder, model, weight, DOCS, False, stanford))
    from sentence_transformers import MultiVectorEncoder  # reads Stanford checkpoints too

    st = MultiVectorEncoder(str(folder), device="cpu")
    assert_vectors(m.encode_query(QUERIES), [torch.as_tensor(v) for v in st.encode_query(QUERIES)])
    assert_vectors(m.encode_document(DOCS), [torch.as_tensor(v) for v in st.encode_document(DOCS)])


def test_stanford_metadata_defaults_and_punctuation(make_checkpoint):
    """ColBERTConfig's defaults where artifact.metadata is silent (documents of 220 tokens), mask_punctuation false
    keeps punctuation in documents (MultiVectorEncoder reads it too), and a similarity other than cosine is refused."""
    from sentence_transformers import MultiVectorEncoder

    folder, model, weight = stanford_folder(make_checkpoint, {"query_maxlen": 12, "mask_punctuation": False})
    m = embzoo.load(folder)
    assert m.max_seq_length == 220
    stanford = SETTINGS | {"query_prefix": "[unused0]", "document_prefix": "[unused1]", "document_length": 220}
    texts = ["hello, world! how are you?", "a.b.c"]
    kept = pylate_reference(folder, model, weight, texts, False, stanford | {"skiplist_words": []})
    assert_vectors(m.encode_document(texts), kept)
    st = MultiVectorEncoder(str(folder), device="cpu")
    assert_vectors(m.encode_document(texts), [torch.as_tensor(v) for v in st.encode_document(texts)])
    (folder / "artifact.metadata").write_text(json.dumps({"similarity": "l2"}))
    with pytest.raises(SnapshotError, match="similarity 'l2'"):
        embzoo.load(folder)


def test_colbert_needs_a_role_and_truncates_with_one_warning(make_checkpoint, caplog):
    folder, _, _ = pylate_folder(make_checkpoint)
    m = embzoo.load(folder)
    with pytest.raises(ValueError, match="encode_query / encode_document"):
        m.encode(QUERIES)
    with caplog.at_level("WARNING"):
        m.encode_query(QUERIES)
    assert [r.getMessage() for r in caplog.records] == [
        "1 of 3 inputs were longer than 11 tokens and were truncated to that limit"
    ]
    assert m.encode_query("hi", convert_to_tensor=True).shape == (12, DIM)  # expanded to the query length


def test_scoring_takes_one_text_or_many(make_checkpoint):
    from embzoo.scoring import maxsim_scores

    folder, _, _ = pylate_folder(make_checkpoint)
    m = embzoo.load(folder)
    q, docs = m.encode_query(QUERIES[0]), m.encode_document(DOCS)
    matrix = maxsim_scores(q, docs)  # one query's [n, dim] array, a list of documents
    assert matrix.shape == (1, len(DOCS))
    assert np.allclose(maxsim_scores([q] * len(DOCS), docs, pairwise=True), matrix[0])
    assert np.allclose(maxsim_scores([q], docs, pairs=[[0, 2], [0, 0]]), matrix[0, [2, 0]])
    with pytest.raises(ValueError, match="as many queries"):
        maxsim_scores([q], docs, pairwise=True)


def test_colbert_rank_is_maxsim_summed(make_checkpoint):
    folder, model, weight = pylate_folder(make_checkpoint)
    m = embzoo.load(folder)
    q = pylate_reference(folder, model, weight, QUERIES[:1], True, SETTINGS)[0]
    docs = pylate_reference(folder, model, weight, DOCS, False, SETTINGS)
    expected = np.array([(q @ d.T).max(-1).values.sum().item() if len(d) else 0.0 for d in docs])
    ranking = m.rank(QUERIES[0], DOCS)
    assert [r["index"] for r in ranking] == list(np.argsort(-expected, kind="stable"))
    assert np.allclose([r["score"] for r in sorted(ranking, key=lambda r: r["index"])], expected, atol=1e-5)
    assert np.allclose(m.score([(QUERIES[0], d) for d in DOCS]), expected, atol=1e-5)


def test_max_seq_length_sets_the_document_length(make_checkpoint):
    folder, model, weight = pylate_folder(make_checkpoint)
    m = embzoo.load(folder, max_seq_length=8)
    assert m.max_seq_length == 8
    ref = pylate_reference(folder, model, weight, DOCS[:1], False, SETTINGS | {"document_length": 8})
    assert_vectors(m.encode_document(DOCS[:1]), ref)


def test_cli_embed_and_rerank_with_colbert(make_checkpoint, capsys):
    from embzoo.cli import main

    folder, _, _ = pylate_folder(make_checkpoint)
    m = embzoo.load(folder, device="cpu")
    main(["embed", "--model", str(folder), "--device", "cpu", "--prompt-name", "document", *DOCS[:2]])
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert_vectors(
        [np.asarray(r["multivector"]) for r in rows], [torch.from_numpy(v) for v in m.encode_document(DOCS[:2])]
    )
    with pytest.raises(SystemExit, match="embzoo embed: .*encode_query / encode_document"):
        main(["embed", "--model", str(folder), "--device", "cpu", "hello"])
    main(["rerank", "--model", str(folder), "--device", "cpu", "--query", QUERIES[0], *DOCS])
    ranked = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    want = m.rank(QUERIES[0], DOCS)
    assert [r["index"] for r in ranked] == [w["index"] for w in want]
    main(["list"])
    listed = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["lightonai/GTE-ModernColBERT-v1", "modernbert", "per-token", "128", "300", "-"] in listed
    assert ["naver/splade-v3", "bert", "sparse", "30522", "512", "-"] in listed
    main(["demo", "--model", str(folder), "--device", "cpu", "--top-k", "2"])
    lines = capsys.readouterr().out.splitlines()
    assert f"({DIM}-d multivector, cpu)" in lines[0] and len(lines) == 4


def test_embzoo_folder_reloads_bit_exactly(make_checkpoint, tmp_path):
    from conftest import assert_round_trip

    metadata = {"query_maxlen": 12, "doc_maxlen": 20, "attend_to_mask_tokens": False, "dim": DIM}
    for name, (folder, *_) in {
        "pylate": pylate_folder(make_checkpoint),
        "stanford": stanford_folder(make_checkpoint, metadata),  # linear.weight kept under its own name
    }.items():
        run = lambda m: (*m.encode_query(QUERIES), *m.encode_document(DOCS))  # noqa: E731
        assert_round_trip(folder, tmp_path / f"{name}-converted", run)


def test_inspect_shows_the_stanford_projection(make_checkpoint):
    folder, _, _ = stanford_folder(make_checkpoint, {"dim": DIM})
    found = inspect_checkpoint(folder)
    linear = next(r for r in found.rows if r.key == "linear.weight")
    assert (linear.status, linear.param, linear.shape) == ("claimed", "colbert.linear.weight", (DIM, 32))
    assert {r.status for r in found.rows} == {"claimed", "dropped"} and found.side_files == ("artifact.metadata",)

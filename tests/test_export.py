"""`embzoo export --format sentence-transformers`: the folder sentence-transformers loads gives the vectors embzoo
gives for the source (the reference is sentence-transformers itself, on the export), embzoo reloads it, the weights
are the checkpoint's own tensors under transformers' names, and what the layout cannot express is refused."""

import functools
import json
import re

import numpy as np
import pytest
import torch
from conftest import TINY_GEMMA3, TINY_QWEN3, add_dense, no_type_ids, write_st_layout
from families.test_jina_xlm_roberta import RENAMES  # transformers' XLM-R names → jina's flash layout
from peft import LoraConfig, get_peft_model
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer
from tokenizers import Tokenizer
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    Gemma3TextConfig,
    Gemma3TextModel,
    GteConfig,
    GteModel,
    JinaEmbeddingsV3Config,
    JinaEmbeddingsV3Model,
    ModernBertConfig,
    ModernBertModel,
    NomicBertConfig,
    NomicBertModel,
    Qwen3Config,
    Qwen3ForCausalLM,
    Qwen3Model,
    XLMRobertaConfig,
    XLMRobertaModel,
)

import embzoo
from embzoo.cli import main
from embzoo.conversion.export import ExportError, export_sentence_transformers
from embzoo.conversion.native import NotNative

TEXTS = ["what is rope?", "a", "Rotary position embeddings rotate query and key vectors", "x y z", "naïve café"]
SIZES = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48)
PROMPTS = {"query": "search query: ", "document": ""}
TANH = "torch.nn.modules.activation.Tanh"


def exported(src, tmp_path, **options):
    dst = tmp_path / "export"
    export_sentence_transformers(src, dst, **options)
    return dst


def assert_same_vectors(src, dst, *settings):
    """sentence-transformers on the export, and embzoo on the export, give embzoo's vectors of the source, with each
    of the encode `settings` (default: none)."""
    ours, again = embzoo.load(src, device="cpu"), embzoo.load(dst, device="cpu")
    st = SentenceTransformer(str(dst), device="cpu", model_kwargs={"attn_implementation": "eager"})
    for encode in settings or ({},):
        want = ours.encode(TEXTS, **encode)
        np.testing.assert_allclose(st.encode(TEXTS, **encode), want, atol=1e-5, rtol=0)
        np.testing.assert_allclose(again.encode(TEXTS, **encode), want, atol=1e-6, rtol=0)


def test_minilm_export_is_its_checkpoint_and_matches_sentence_transformers(minilm_dir, tmp_path):
    """BERT's q/k/v are fused into one qkv tensor in embzoo: the export splits them back, bit for bit."""
    dst = exported(minilm_dir, tmp_path)
    assert_same_vectors(minilm_dir, dst)
    source, out = load_file(minilm_dir / "model.safetensors"), load_file(dst / "model.safetensors")
    assert set(out) == set(source) - {"embeddings.position_ids"}  # a buffer transformers no longer saves
    for name, tensor in out.items():
        assert torch.equal(tensor, source[name]), name
    config = json.loads((dst / "config.json").read_text())
    assert config["architectures"] == ["BertModel"] and config["dtype"] == "float32"


@pytest.fixture
def bert_folder(make_checkpoint):
    """BERT with a prompt left out of the pool, two Dense layers (Tanh with bias, Identity without), Normalize,
    lowercasing and a default prompt."""
    folder, _ = make_checkpoint(BertModel, BertConfig(**SIZES), noise=0.2)
    pooling = {"word_embedding_dimension": 32, "pooling_mode_mean_tokens": True, "include_prompt": False}
    write_st_layout(folder, pooling, True, 40, prompts=PROMPTS, default_prompt_name="query", similarity_fn_name="dot")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 40, "do_lower_case": True}))
    add_dense(folder, 2, 32, 24, seed=1, bias=True, activation=TANH)
    add_dense(folder, 3, 24, 16, seed=2)
    return folder


def test_bert_with_dense_normalize_and_prompts(bert_folder, tmp_path):
    dst = exported(bert_folder, tmp_path)
    assert_same_vectors(bert_folder, dst, {"prompt_name": "query"}, {"prompt_name": "document"}, {})  # {}: default
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((dst / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    dense = json.loads((dst / "2_Dense" / "config.json").read_text())
    assert dense == {"in_features": 32, "out_features": 24, "bias": True, "activation_function": TANH}
    assert set(load_file(dst / "3_Dense" / "model.safetensors")) == {"linear.weight"}
    settings = json.loads((dst / "config_sentence_transformers.json").read_text())
    assert settings == {"prompts": PROMPTS, "default_prompt_name": "query", "similarity_fn_name": "dot"}  # kept
    assert json.loads((dst / "sentence_bert_config.json").read_text()) == {"max_seq_length": 40, "do_lower_case": True}


FAMILIES = [
    pytest.param(  # position ids from padding_idx + 1; the pooler (unused by embzoo) copied from the checkpoint
        XLMRobertaModel,
        XLMRobertaConfig(**SIZES, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1),
        {"pooling_mode_cls_token": True, "pooling_mode_max_tokens": True},
        id="xlm-roberta",
    ),
    pytest.param(
        ModernBertModel,
        ModernBertConfig(
            **SIZES,
            pad_token_id=0,
            bos_token_id=101,
            eos_token_id=102,
            cls_token_id=101,
            sep_token_id=102,
            local_attention=8,
            global_attn_every_n_layers=2,
        ),  # fmt: skip
        {"pooling_mode_mean_tokens": True},
        id="modernbert",
    ),
    pytest.param(  # a *ForCausalLM checkpoint: "model." prefix, lm_head left out; no recipe, so no end token
        Qwen3ForCausalLM,
        Qwen3Config(**TINY_QWEN3),
        {"pooling_mode_lasttoken": True},
        id="qwen3",
    ),
    pytest.param(  # the authors' layout (qkv_proj, up_gate_proj reordered to embzoo's [gate; up])
        GteModel,
        GteConfig(**SIZES, type_vocab_size=1, pad_token_id=0),
        {"pooling_mode_cls_token": True},
        id="gte",
    ),
    pytest.param(  # transformers 5 reads (and writes) the remote code's names natively
        NomicBertModel, NomicBertConfig(**SIZES, pad_token_id=0), {"pooling_mode_mean_tokens": True}, id="nomic-bert"
    ),
    pytest.param(  # the -hf layout without task adapters: XLM-R with rotary positions
        JinaEmbeddingsV3Model,
        JinaEmbeddingsV3Config(**SIZES, pad_token_id=0, layer_norm_eps=1e-5),
        {"pooling_mode_mean_tokens": True},
        id="jina-embeddings-v3",
    ),
    pytest.param(  # EmbeddingGemma-like: bidirectional, with sliding layers
        Gemma3TextModel,
        Gemma3TextConfig(**TINY_GEMMA3),
        {"pooling_mode_mean_tokens": True},
        id="gemma3",
    ),
    pytest.param(  # transformers' own names (save_original_format=False): written as save_pretrained writes them
        GteModel,
        GteConfig(**SIZES, type_vocab_size=1, pad_token_id=0),
        {"pooling_mode_weightedmean_tokens": True},
        id="gte-own-names",
    ),
]


@pytest.mark.parametrize(("model_cls", "config", "pooling"), FAMILIES)
def test_families_match_sentence_transformers_and_transformers_own_save(
    make_checkpoint, tmp_path, request, model_cls, config, pooling
):
    """The export's tensors are exactly those transformers' save_pretrained writes for the base model."""
    own_names = request.node.callspec.id == "gte-own-names"
    folder, reference = make_checkpoint(model_cls, config, noise=0.2, save_original_format=not own_names)
    no_type_ids(folder)
    write_st_layout(folder, {"word_embedding_dimension": 32} | pooling, True, 64, prompts=PROMPTS)
    dst = exported(folder, tmp_path)
    assert_same_vectors(folder, dst, {"prompt_name": "query"}, {"prompt_name": "document"})
    reference.base_model.save_pretrained(tmp_path / "saved")
    saved, out = load_file(tmp_path / "saved" / "model.safetensors"), load_file(dst / "model.safetensors")
    assert out.keys() == saved.keys()
    for name, tensor in out.items():
        assert torch.equal(tensor, saved[name]), name
    config = json.loads((dst / "config.json").read_text())
    assert config["architectures"] == [type(reference.base_model).__name__]


def test_bfloat16_export(bert_folder, tmp_path):
    dst = exported(bert_folder, tmp_path, dtype="bfloat16")
    with safe_open(str(dst / "model.safetensors"), framework="pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}  # noqa: SIM118
    assert json.loads((dst / "config.json").read_text())["dtype"] == "bfloat16"
    want = embzoo.load(bert_folder, device="cpu").encode(TEXTS)
    np.testing.assert_allclose(embzoo.load(dst, device="cpu").encode(TEXTS), want, atol=2e-2)


def test_a_lora_adapter_is_exported_merged(make_checkpoint, tmp_path):
    """An adapter folder as SRC: the export holds the base weights with the LoRA merged, as peft merges it."""
    base, model = make_checkpoint(Qwen3Model, Qwen3Config(**TINY_QWEN3), noise=0.2)
    write_st_layout(base, {"word_embedding_dimension": 32, "pooling_mode_lasttoken": True}, True, 64)
    torch.manual_seed(1)
    lora = LoraConfig(target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"], init_lora_weights=False, r=4)
    peft_model = get_peft_model(model, lora)
    peft_model.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "adapter_config.json").write_text(
        json.dumps(config | {"base_model_name_or_path": str(base)})
    )
    dst = exported(tmp_path / "adapter", tmp_path)
    assert_same_vectors(tmp_path / "adapter", dst)
    merged = peft_model.merge_and_unload().state_dict()
    for name, tensor in load_file(dst / "model.safetensors").items():
        torch.testing.assert_close(tensor, merged[name], atol=1e-6, rtol=0)


def test_bge_m3_exports_its_dense_vectors(make_checkpoint, tmp_path):
    """BGE-M3's sparse and ColBERT heads have no place in the layout: the folder holds the dense model, as the
    BGE-M3 repository's own sentence-transformers files do, and the summary says what was left out."""
    folder, _ = make_checkpoint(BertModel, BertConfig(**SIZES), noise=0.2)
    write_st_layout(folder, {"pooling_mode_cls_token": True, "word_embedding_dimension": 32}, True, 64)
    torch.manual_seed(1)
    torch.save({"weight": torch.randn(32, 32), "bias": torch.randn(32)}, folder / "colbert_linear.pt")
    torch.save({"weight": torch.randn(1, 32), "bias": torch.randn(1)}, folder / "sparse_linear.pt")
    assert embzoo.load(folder, device="cpu").model.outputs == ("sentence", "multivector", "sparse", "tokens")
    result = export_sentence_transformers(folder, tmp_path / "export")
    assert (
        "Not written: the multivector and sparse heads (BGE-M3's; the folder gives the dense vectors)."
        in result.summary()
    )
    assert not list((tmp_path / "export").glob("*.pt"))
    assert_same_vectors(folder, tmp_path / "export")


def with_endoftext(folder):
    """Add <|endoftext|> (id 30522) to MiniLM's tokenizer, whose template does not end inputs with it."""
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.add_special_tokens(["<|endoftext|>"])
    tok.save(str(folder / "tokenizer.json"))
    return folder


@pytest.mark.parametrize(
    ("recipe", "reasons"),
    [
        ("Qwen/Qwen3-Embedding-0.6B", ["the end token '<|endoftext|>' embzoo appends"]),
        (
            "Alibaba-NLP/gte-Qwen2-1.5B-instruct",
            ["end token", "change to config.json's architecture (causal)", "bidirectional attention (Qwen3Model runs"],
        ),
        (
            "McGill-NLP/LLM2Vec-Mistral-7B-Instruct-v2-mntp-supervised",
            ["instruction masking 'text_tokens'", "the suffix ' [/INST]'", "bidirectional attention"],
        ),
    ],
)
def test_refuses_what_decoder_recipes_add(make_checkpoint, tmp_path, recipe, reasons):
    folder, _ = make_checkpoint(Qwen3ForCausalLM, Qwen3Config(**TINY_QWEN3 | {"vocab_size": 30528}))
    with pytest.raises(ExportError) as error:
        exported(with_endoftext(folder), tmp_path, recipe=recipe)
    for reason in reasons:
        assert reason in str(error.value)
    assert not (tmp_path / "export").exists()


def test_refuses_models_the_layout_cannot_express(make_checkpoint, tmp_path):
    folder, _ = make_checkpoint(BertModel, BertConfig(**SIZES))
    with pytest.raises(ExportError, match="the layer norm before Matryoshka truncation"):
        exported(folder, tmp_path, recipe="nomic-ai/nomic-embed-text-v1.5")
    write_st_layout(folder, {"pooling_mode": ["mean", "cls"]}, False, 64)
    with pytest.raises(ExportError, match=r"pooling modes \('mean', 'cls'\) in this order"):
        exported(folder, tmp_path)
    splade, _ = make_checkpoint(BertForMaskedLM, BertConfig(**SIZES), name="splade")
    with pytest.raises(ExportError, match="sparse vectors as the main output"):
        exported(splade, tmp_path, recipe="naver/splade-v3")
    reranker, _ = make_checkpoint(BertForSequenceClassification, BertConfig(**SIZES, num_labels=1), name="ce")
    with pytest.raises(ExportError, match="is a reranker"):
        exported(reranker, tmp_path)


def test_refuses_checkpoints_transformers_does_not_read(make_checkpoint, tmp_path):
    """A model_type without a transformers class, and XLM-R under the remote-code names of jina-reranker-v2."""
    remote = tmp_path / "remote"
    remote.mkdir()
    (remote / "config.json").write_text(json.dumps({"model_type": "new", "architectures": ["NewModel"]}))
    with pytest.raises(NotNative, match="model_type 'new' has no transformers class"):
        exported(remote, tmp_path)
    config = XLMRobertaConfig(**SIZES, max_position_embeddings=80, type_vocab_size=1, pad_token_id=1)
    folder, _ = make_checkpoint(XLMRobertaModel, config)
    to_flash_names(folder)
    with pytest.raises(NotNative, match=r"not in transformers' XLMRobertaModel layout:\n  not in it: .*mixer\.Wqkv"):
        exported(folder, tmp_path)


def to_flash_names(folder):
    """An XLMRobertaModel folder rewritten in the flash layout of jina's remote code (mixer.Wqkv = [Q; K; V])."""
    sd, out = load_file(folder / "model.safetensors"), {}
    for key, tensor in sd.items():
        if ".attention.self." not in key:
            out[functools.reduce(lambda k, rule: re.sub(*rule, k), RENAMES, key)] = tensor
    for i in range(SIZES["num_hidden_layers"]):
        for p in ("weight", "bias"):
            parts = [sd[f"encoder.layer.{i}.attention.self.{n}.{p}"] for n in ("query", "key", "value")]
            out[f"encoder.layers.{i}.mixer.Wqkv.{p}"] = torch.cat(parts)
    save_file(out, folder / "model.safetensors")
    config = json.loads((folder / "config.json").read_text())
    auto_map = {"AutoConfig": "configuration_xlm_roberta.XLMRobertaFlashConfig"}
    (folder / "config.json").write_text(json.dumps(config | {"auto_map": auto_map}))


def test_refuses_a_folder_that_is_not_empty(minilm_dir, tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "notes.txt").write_text("keep me")
    with pytest.raises(ExportError, match="exists and is not an empty folder"):
        exported(minilm_dir, tmp_path)


def test_cli_export_prints_what_it_wrote(bert_folder, tmp_path, capsys):
    dst = tmp_path / "cli"
    main(["export", str(dst), "--format", "sentence-transformers", "--model", str(bert_folder)])
    out = capsys.readouterr().out
    assert f"Wrote a sentence-transformers folder to {dst}: BertModel weights in float32" in out
    assert "Transformer → Pooling → Dense → Dense → Normalize, 16-d vectors, max_seq_length 40" in out
    with pytest.raises(SystemExit, match="embzoo export: .* exists and is not an empty folder"):
        main(["export", str(dst), "--format", "sentence-transformers", "--model", str(bert_folder)])

"""bitsandbytes 8-bit (LLM.int8()) and 4-bit NF4 loading of decoder embedders: parity with transformers'
own bitsandbytes integration on the same checkpoint, the error against the full-precision load, and which
layers are quantized. The CUDA checks are marked gpu (device machine only)."""

import numpy as np
import pytest
import torch
from conftest import ragged_ids, write_st_layout
from torch import nn
from transformers import BitsAndBytesConfig, LlamaConfig, LlamaModel, Qwen3Config, Qwen3Model

import embzoo
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.quantized_linear import quantize_linears

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed: pip install 'embzoo[quant]'")

SIZES = dict(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)
SIZES |= dict(intermediate_size=128, max_position_embeddings=128, initializer_range=0.2)  # std 0.2: blocks matter
MODELS = {
    "qwen3": (Qwen3Model, Qwen3Config(**SIZES, head_dim=16)),
    "llama-bias": (LlamaModel, LlamaConfig(**SIZES, attention_bias=True, mlp_bias=True)),
}
LOAD_ARGS = {"8bit": {"load_in_8bit": True}, "nf4": {"load_in_4bit": True}}
BNB_CONFIGS = {
    "8bit": BitsAndBytesConfig(load_in_8bit=True),
    "nf4": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32),
}
BNB_TYPES = {"8bit": bnb.nn.Linear8bitLt, "nf4": bnb.nn.Linear4bit}
TEXTS = ["hello", "The quick brown fox jumps over the lazy dog.", "what is rope? " * 12, "naïve café", "ok"]
# pooled (last token, normalized) vectors against the float32 load, worst over TEXTS and both models:
# measured on CPU cos 0.99867 / max abs 0.021 (8bit), cos 0.8865 / max abs 0.153 (nf4: 16 levels per weight in a
# 64-wide random model with std 0.2, so the error does not average out)
BOUNDS = {"8bit": (0.995, 0.05), "nf4": (0.8, 0.3)}
# test_cuda's 8-layer, 256-wide model at transformers' default init: on CPU (8bit float16, nf4 bfloat16) it
# measured cos 0.99921 / max abs 0.0079 (8bit), cos 0.9480 / max abs 0.061 (nf4)
CUDA_BOUNDS = {"8bit": (0.995, 0.03), "nf4": (0.9, 0.15)}
CUDA_SIZES = SIZES | dict(hidden_size=256, intermediate_size=2048, num_hidden_layers=8, initializer_range=0.02)


def embedder_folder(make_checkpoint, model):
    """A Qwen3-Embedding-like folder: last-token pooling, normalized."""
    folder, _ = make_checkpoint(*MODELS[model])
    write_st_layout(folder, {"pooling_mode_lasttoken": True, "word_embedding_dimension": 64}, True, 128)
    return folder


def linears(backbone):
    return {name: type(m) for name, m in backbone.named_modules() if isinstance(m, nn.Linear)}


@pytest.mark.parametrize("mode", ["8bit", "nf4"])
@pytest.mark.parametrize("model", MODELS)
def test_matches_transformers_bitsandbytes(make_checkpoint, model, mode):
    """Same checkpoint, same bitsandbytes settings: embzoo's quantized backbone equals transformers' (float32
    compute). One sequence at a time: LLM.int8() picks outlier columns over the whole batch."""
    folder = embedder_folder(make_checkpoint, model)
    cls, _ = MODELS[model]
    options = dict(dtype=torch.float32, device_map="cpu", attn_implementation="eager")
    reference = cls.from_pretrained(folder, quantization_config=BNB_CONFIGS[mode], **options).eval()
    backbone = embzoo.load(folder, device="cpu", dtype="float32", **LOAD_ARGS[mode]).model.backbone
    assert set(linears(backbone).values()) == {BNB_TYPES[mode]}
    seqs = ragged_ids([1, 9, 33], SIZES["vocab_size"])
    with torch.no_grad():
        want = torch.cat([reference(input_ids=torch.tensor([s])).last_hidden_state[0] for s in seqs])
        got = torch.cat([backbone(PackedBatch.from_sequences([s])) for s in seqs])
    print(f"{model} {mode}: max abs diff vs transformers+bitsandbytes {(got - want).abs().max():.2e}")
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["8bit", "nf4"])
@pytest.mark.parametrize("model", MODELS)
def test_error_against_full_precision(make_checkpoint, model, mode):
    """Default dtypes (8bit: float16, nf4: float32 on CPU): only the blocks' Linear layers are bitsandbytes
    layers; embeddings and norms keep the dtype; pooled vectors stay within BOUNDS of the float32 load."""
    folder = embedder_folder(make_checkpoint, model)
    full = embzoo.load(folder, device="cpu").encode(TEXTS)
    quantized = embzoo.load(folder, device="cpu", **LOAD_ARGS[mode])
    backbone = quantized.model.backbone
    dtype = torch.float16 if mode == "8bit" else torch.float32
    assert linears(backbone) == {
        f"layers.{i}.{name}": BNB_TYPES[mode]
        for i in range(SIZES["num_hidden_layers"])
        for name in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")
    }
    assert backbone.embed.tok.weight.dtype == dtype and type(backbone.embed.tok) is nn.Embedding
    norms = [m for m in backbone.modules() if isinstance(m, nn.RMSNorm)]
    assert len(norms) >= 5 and all(n.weight.dtype == dtype for n in norms)
    got = quantized.encode(TEXTS)
    cos, diff = np.sum(got * full, axis=1).min(), np.abs(got - full).max()
    print(f"{model} {mode}: min cosine {cos:.5f}, max abs diff {diff:.4f} against the float32 load")
    min_cos, max_diff = BOUNDS[mode]
    assert cos >= min_cos and diff <= max_diff
    assert diff > 0  # the weights really were quantized


def test_double_quant_quantizes_the_block_scales(make_checkpoint):
    folder = embedder_folder(make_checkpoint, "qwen3")
    backbone = embzoo.load(folder, device="cpu").model.backbone
    batch = PackedBatch.from_sequences(ragged_ids([5, 12], SIZES["vocab_size"]))
    with torch.no_grad():
        plain = quantize_linears(embzoo.load(folder, device="cpu").model.backbone, "nf4", torch.float32, "cpu")(batch)
        nested = quantize_linears(backbone, "nf4", torch.float32, "cpu", double_quant=True)
        assert nested.layers[0].mlp.up.weight.quant_state.nested
        assert (nested(batch) - plain).abs().max() < 0.05


def test_bad_arguments(make_checkpoint, monkeypatch):
    folder = embedder_folder(make_checkpoint, "qwen3")
    with pytest.raises(ValueError, match="load_in_8bit, load_in_4bit and load_in_fp8 are exclusive"):
        embzoo.load(folder, device="cpu", load_in_8bit=True, load_in_4bit=True)
    backbone = embzoo.load(folder, device="cpu").model.backbone
    with pytest.raises(ValueError, match=r"unknown quantization mode 'int4'; supported: \('8bit', 'nf4', 'fp8'\)"):
        quantize_linears(backbone, "int4", torch.float32, "cpu")
    with pytest.raises(ValueError, match="Linear has no transformer blocks"):
        quantize_linears(nn.Linear(4, 4), "nf4", torch.float32, "cpu")
    monkeypatch.setitem(__import__("sys").modules, "bitsandbytes", None)
    with pytest.raises(ImportError, match=r"pip install 'embzoo\[quant\]'"):
        embzoo.load(folder, device="cpu", load_in_4bit=True)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["8bit", "nf4"])
def test_cuda(make_checkpoint, mode):
    """On CUDA with the default dtypes (8bit: float16, nf4: bfloat16): pooled vectors within CUDA_BOUNDS of the CPU
    float32 load, and the load never holds more than about one block's full-precision weights on the device."""
    folder, _ = make_checkpoint(Qwen3Model, Qwen3Config(**CUDA_SIZES, head_dim=64))
    write_st_layout(folder, {"pooling_mode_lasttoken": True, "word_embedding_dimension": 256}, True, 128)
    full = embzoo.load(folder, device="cpu").encode(TEXTS)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    start = torch.cuda.memory_allocated()
    quantized = embzoo.load(folder, device="cuda", **LOAD_ARGS[mode])
    loaded = torch.cuda.memory_allocated() - start
    transient = torch.cuda.max_memory_allocated() - start - loaded
    layer = quantized.model.backbone.layers[0]
    block_bytes = 4 * sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, nn.Linear))
    got = quantized.encode(TEXTS)
    cos, diff = np.sum(got * full, axis=1).min(), np.abs(got - full).max()
    print(f"cuda {mode}: min cosine {cos:.5f}, max abs diff {diff:.4f}")
    mib = {k: f"{v / 2**20:.1f} MiB" for k, v in dict(kept=loaded, transient=transient, block=block_bytes).items()}
    print(f"{mib['kept']} kept, {mib['transient']} transient peak; one fp32 block's Linear weights {mib['block']}")
    assert set(linears(quantized.model.backbone).values()) == {BNB_TYPES[mode]}
    assert all(p.device.type == "cuda" for p in quantized.model.parameters())
    min_cos, max_diff = CUDA_BOUNDS[mode]
    assert cos >= min_cos and diff <= max_diff
    assert transient <= block_bytes

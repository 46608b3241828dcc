"""End-to-end on CUDA (device machine only): every backend and kernel path against CPU float32 or sdpa, and
the decoder path (small Qwen3: GQA, head_dim != hidden / heads, q/k norm, causal, sliding windows, softcap)
against sdpa and transformers' Qwen3Model.

Run with real Triton: `TRITON_INTERPRET=0 EMBZOO_TEST_TOKENIZER=<MiniLM tokenizer files> pytest -m gpu`.
"""

import numpy as np
import pytest
import torch
from conftest import padded, ragged_ids, save_checkpoint, write_st_layout
from transformers import BertConfig, BertModel

import embzoo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
TEXTS = ["", "hello", "The quick brown fox jumps over the lazy dog.", "日本語のテキスト", "word " * 300]
BGE_SMALL = BertConfig(hidden_size=384, num_hidden_layers=4, num_attention_heads=12, intermediate_size=1536)


@pytest.fixture(scope="module")
def folder(tmp_path_factory, tokenizer_dir):
    torch.manual_seed(0)
    path = save_checkpoint(BertModel(BGE_SMALL), tmp_path_factory.mktemp("gpu") / "bge-small-like", tokenizer_dir)
    write_st_layout(path, {"pooling_mode": ["cls", "mean", "max"], "embedding_dimension": 384}, True, 256)
    return path


@pytest.fixture(scope="module")
def reference(folder):
    return embzoo.load(folder, device="cpu").encode(TEXTS)


@pytest.mark.parametrize("backend", ["sdpa", "varlen", "flex"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_backends_match_cpu_float32(folder, reference, backend, dtype):
    got = embzoo.load(folder, device="cuda", dtype=dtype, attn_backend=backend).encode(TEXTS)
    assert (np.sum(got * reference, axis=1) > 0.999).all()
    np.testing.assert_allclose(got, reference, atol=2e-2)


def test_cuda_float32_matches_cpu_float32(folder, reference):
    got = embzoo.load(folder, device="cuda", dtype="float32").encode(TEXTS)
    np.testing.assert_allclose(got, reference, atol=1e-4)


MODERN = {
    "rope-local-global": dict(
        positions="rope",
        norm_placement="pre",
        first_attn_norm=False,
        final_norm=True,
        norm_bias=False,
        layer_types=("full", "local", "local"),
        local_window=16,
        rope_theta=160000.0,
        rope_theta_local=10000.0,
        mlp_gated=True,
    ),
    "alibi": dict(positions="alibi", mlp_gated=True, mlp_up_bias=False),
    "rope-dynamic-ntk": dict(
        positions="rope", rotary_fraction=0.5, rope_scaling="ntk_dynamic", rope_factor=2.0, rope_original_max=64
    ),
}


@pytest.mark.parametrize("arch", MODERN.values(), ids=MODERN.keys())
@pytest.mark.parametrize("backend", [None, "sdpa", "flex"])
def test_modern_backbones_on_cuda_match_cpu_float32(arch, backend):
    """The GPU path of each feature (rotary kernel, local windows, ALiBi, dynamic NTK) vs CPU fp32."""
    from embzoo.config import ArchConfig
    from embzoo.modeling.backbone import Backbone
    from embzoo.modeling.batch import PackedBatch

    sizes = dict(vocab_size=1000, hidden_size=128, num_layers=3, num_heads=4, intermediate_size=256, max_positions=512)
    torch.manual_seed(0)
    cpu = Backbone(ArchConfig(**sizes, **arch)).eval()
    gpu = Backbone(ArchConfig(**sizes, **arch), attn_backend=backend).eval()
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.to("cuda", torch.bfloat16)
    g = torch.Generator().manual_seed(1)
    lengths = [1, 200, 37, 90, 5, 130]
    batch = PackedBatch.from_sequences([torch.randint(5, 1000, (n,), generator=g).tolist() for n in lengths])
    with torch.inference_mode():
        want = cpu(batch)
        got = gpu(batch.to("cuda")).float().cpu()
    cos = torch.nn.functional.cosine_similarity(got, want, dim=-1)
    assert cos.min() > 0.99


# ---- decoder path: a small Qwen3 (GQA, head_dim != hidden / heads, per-head q/k norm), causal -------------

QWEN3_SMALL = dict(
    vocab_size=1000,
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=64,
    max_position_embeddings=1024,
    rope_theta=1e6,
)
DECODERS = {  # Qwen3Config extras; "sliding": layers 1 and 2 see the last 48 tokens (window 47 to the left)
    "causal": {},
    "sliding": dict(use_sliding_window=True, sliding_window=48, max_window_layers=1),
}
DEC_LENGTHS = [1, 300, 37, 129, 5, 200]
MIN_COS_BF16 = 0.999  # token-wise cosine, bf16 vs bf16 (about 0.9999 seen on CPU)


@pytest.fixture(scope="module", params=DECODERS.values(), ids=DECODERS.keys())
def qwen3(request, tmp_path_factory):
    """(transformers Qwen3Model fp32 on the CPU, its Hub-layout folder, ragged ids)."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    hf = Qwen3Model(Qwen3Config(**QWEN3_SMALL, **request.param, attn_implementation="sdpa")).eval()
    folder = tmp_path_factory.mktemp("qwen3")
    hf.save_pretrained(folder)
    return hf, folder, ragged_ids(DEC_LENGTHS, QWEN3_SMALL["vocab_size"], seed=1)


def decoder_states(folder, seqs, dtype, backend=None) -> torch.Tensor:
    """Our backbone loaded from folder through the converter, run on CUDA: fp32 [T, D] on the CPU."""
    from embzoo.conversion.load import load_backbone
    from embzoo.conversion.snapshot import read_snapshot
    from embzoo.modeling.batch import PackedBatch

    backbone, _ = load_backbone(read_snapshot(folder), attn_backend=backend)
    with torch.inference_mode():
        return backbone.to("cuda", dtype)(PackedBatch.from_sequences(seqs).to("cuda")).float().cpu()


def token_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a, b, dim=-1)


@pytest.mark.parametrize("backend", ["flash", "varlen", "flex"])
def test_decoder_backends_match_sdpa_bf16(qwen3, backend):
    from embzoo.modeling.attention import available_backends

    hf, folder, seqs = qwen3
    features = {"causal", "window"} if hf.config.use_sliding_window else {"causal"}
    if backend not in available_backends("cuda", torch.bfloat16, features):
        pytest.skip(f"{backend} cannot run {sorted(features)} here")
    got = decoder_states(folder, seqs, torch.bfloat16, backend)
    want = decoder_states(folder, seqs, torch.bfloat16, "sdpa")
    assert token_cos(got, want).min() > MIN_COS_BF16


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_decoder_matches_transformers_on_cuda(qwen3, dtype):
    """transformers Qwen3Model (sdpa, right-padded) vs ours (auto backend: flex in fp32, varlen/flash in bf16).
    fp32: every token within 1e-4; bf16: token-wise cosine > 0.999, last tokens (the embedding) included."""
    import copy

    hf, folder, seqs = qwen3
    dt = getattr(torch, dtype)
    ids, mask = padded(seqs)
    with torch.inference_mode():
        out = copy.deepcopy(hf).to("cuda", dt)(input_ids=ids.cuda(), attention_mask=mask.cuda()).last_hidden_state
    want = torch.cat([out[i, : len(s)] for i, s in enumerate(seqs)]).float().cpu()
    got = decoder_states(folder, seqs, dt)
    if dt == torch.float32:
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    else:
        assert token_cos(got, want).min() > MIN_COS_BF16


@pytest.mark.parametrize("backend", ["flash", "flex"])
def test_decoder_softcap_routes_to_flex(backend):
    """Gemma2-style attention (score softcap, local/global layers): auto picks flash if installed, else flex;
    each backend that can run it matches sdpa, and the cap really changes the output."""
    from dataclasses import replace

    from transformers import Qwen3Config

    from embzoo.conversion.families import llama
    from embzoo.modeling.attention import available_backends, resolve_backend
    from embzoo.modeling.backbone import Backbone
    from embzoo.modeling.batch import PackedBatch

    features = {"causal", "window", "softcap"}
    can = available_backends("cuda", torch.bfloat16, features)
    assert resolve_backend("cuda", torch.bfloat16, features) == ("flash" if "flash" in can else "flex")
    if backend not in can:
        pytest.skip(f"{backend} cannot run {sorted(features)} here")
    plain = llama.to_arch(Qwen3Config(**QWEN3_SMALL).to_dict())
    capped = replace(plain, attn_softcap=1.0, layer_types=("local", "full", "local"), local_window=47)
    torch.manual_seed(0)
    weights = Backbone(capped).state_dict()
    batch = PackedBatch.from_sequences(ragged_ids(DEC_LENGTHS, QWEN3_SMALL["vocab_size"], seed=1)).to("cuda")

    def run(cfg, attn_backend):
        model = Backbone(cfg, attn_backend)
        model.load_state_dict(weights)
        with torch.inference_mode():
            return model.to("cuda", torch.bfloat16)(batch).float().cpu()

    got, want = run(capped, backend), run(capped, "sdpa")
    assert token_cos(got, want).min() > MIN_COS_BF16
    uncapped = run(replace(capped, attn_softcap=0.0), backend)
    assert token_cos(got, uncapped).min() < 0.99

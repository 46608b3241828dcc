"""End-to-end on CUDA (device machine only): every backend and kernel path against CPU float32.

Run with real Triton: `TRITON_INTERPRET=0 EMBZOO_TEST_TOKENIZER=<MiniLM tokenizer files> pytest -m gpu`.
"""

import numpy as np
import pytest
import torch
from conftest import save_checkpoint, write_st_layout
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

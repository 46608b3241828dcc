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

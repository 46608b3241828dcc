"""End-to-end on CUDA (device machine only): every backend against the CPU float32 reference.

Run with real Triton: `TRITON_INTERPRET=0 pytest -m gpu`.
"""

import numpy as np
import pytest
import torch

import embzoo

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]
TEXTS = ["", "hello", "The quick brown fox jumps over the lazy dog.", "日本語のテキスト", "word " * 300]


@pytest.fixture(scope="module")
def reference():
    return embzoo.load(device="cpu").encode(TEXTS)


@pytest.mark.parametrize("backend", ["sdpa", "varlen", "flex"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_cuda_backends_match_cpu_float32(reference, backend, dtype):
    m = embzoo.load(device="cuda", dtype=dtype, attn_backend=backend)
    got = m.encode(TEXTS)
    assert (np.sum(got * reference, axis=1) > 0.999).all()
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(reference), atol=2e-2, rtol=0)


def test_cuda_float32_matches_cpu_float32(reference):
    got = embzoo.load(device="cuda", dtype="float32").encode(TEXTS)
    np.testing.assert_allclose(got, reference, atol=1e-4)

"""add_norm (Triton vs reference vs a float64 oracle, and the reference vs torch's unfused modules): residual add then
RMSNorm (plain or offset weight) or LayerNorm (with or without bias), ragged shapes, strided rows, three dtypes."""

import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embzoo.kernels as K
from embzoo.kernels import dispatch
from embzoo.kernels.add_norm import add_norm_ref
from embzoo.modeling import layers
from embzoo.modeling.layers import OffsetRMSNorm

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["triton", "reference"]
EPS = 1e-6
# (kind, offset, with bias): nn.RMSNorm, Gemma's OffsetRMSNorm, nn.LayerNorm with and without bias
NORMS = [("rms", 0.0, False), ("rms", 1.0, False), ("layer", 0.0, True), ("layer", 0.0, False)]


def oracle(summed, weight, bias, eps, kind, offset) -> torch.Tensor:
    """float64 norm of the (rounded) sum from the formulas: rms s / sqrt(mean(s²) + eps) · (offset + w),
    layer (s - mean) / sqrt(mean((s - mean)²) + eps) · w + b."""
    s = summed.double()
    if kind == "layer":
        s = s - s.mean(-1, keepdim=True)
    y = s / (s.pow(2).mean(-1, keepdim=True) + eps).sqrt() * (offset + weight.double())
    return y if bias is None else y + bias.double()


def rounded_sum(x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """residual + x correctly rounded to x's dtype (from the exact float64 sum)."""
    return (residual.double() + x.double()).to(x.dtype)


def tolerance(dtype: torch.dtype) -> float:
    """fp32: fp32 arithmetic; fp16/bf16: one final rounding (the interpreter truncates bf16: up to one full ulp)."""
    return {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}[dtype]


def sum_matches(got: torch.Tensor, expected: torch.Tensor, impl: str) -> None:
    """summed is torch's add: exact, but for bf16 through the Triton interpreter, whose fp32 -> bf16 casts truncate
    (round to nearest on the GPU: test_cuda_matches_reference checks it bit for bit)."""
    if impl == "triton" and got.dtype == torch.bfloat16 and dispatch.interpreting():
        torch.testing.assert_close(got, expected, rtol=8e-3, atol=0)
    else:
        assert torch.equal(got, expected)


def inputs(tokens: int, dim: int, dtype: torch.dtype, kind: str, offset: float, with_bias: bool) -> tuple:
    """x a column slice of a wider buffer (row stride > dim), residual contiguous; a non-zero mean per row so
    LayerNorm's centring matters; weight around 1 (around 0 with offset 1), bias or None."""
    x = (torch.randn(tokens, dim + 6) + 0.5).to(dtype)[:, 3 : 3 + dim]
    residual = (torch.randn(tokens, dim) * 2).to(dtype)
    weight = (torch.randn(dim) * 0.3 + 1 - offset).to(dtype)
    bias = torch.randn(dim).to(dtype) if with_bias else None
    return x, residual, weight, bias, EPS, kind, offset


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind, offset, with_bias", NORMS, ids=str)
@pytest.mark.parametrize("dim", [1, 48, 100])
@pytest.mark.parametrize("tokens", [0, 1, 9])
def test_add_norm_shapes(tokens: int, dim: int, kind: str, offset: float, with_bias: bool, dtype) -> None:
    args = inputs(tokens, dim, dtype, kind, offset, with_bias)
    x, residual = args[0], args[1]
    assert tokens < 2 or x.stride(0) == dim + 6
    snapshot = x.clone(), residual.clone()
    expected_sum = rounded_sum(x, residual)
    tol = tolerance(dtype)
    for impl in IMPLS:
        with K.use(impl):
            normed, summed = K.add_norm(*args)
        for out in (normed, summed):
            assert out.dtype == dtype and out.shape == (tokens, dim) and out.is_contiguous()
        sum_matches(summed, expected_sum, impl)
        torch.testing.assert_close(normed.double(), oracle(summed, *args[2:]), rtol=tol, atol=tol)
    assert torch.equal(x, snapshot[0]) and torch.equal(residual, snapshot[1]), "the inputs must be left alone"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_block_norm_modules_fuse_as_they_computed_unfused(monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype) -> None:
    """layers.add_norm(norm, x, residual) vs what Block computed before the fusion, norm(residual + x), for the norms
    make_norm builds (weight, bias, eps and offset read from the module): the reference bit for bit in fp32 and to one
    rounding step in fp16/bf16, Triton within tolerance; another module (a wrapper) runs unfused."""
    dim = 40
    modules = [
        nn.RMSNorm(dim, eps=1e-2),
        OffsetRMSNorm(dim, 1e-3, 1.0),
        nn.LayerNorm(dim, eps=1e-1),
        nn.LayerNorm(dim, eps=1e-4, bias=False),
    ]
    x, residual = (torch.randn(13, dim) + 0.5).to(dtype), (torch.randn(13, dim) * 2).to(dtype)
    tol = tolerance(dtype)
    for module in modules:
        module.requires_grad_(False)  # inference: forced "triton" refuses parameters that need a gradient
        for p in module.parameters():
            p.normal_()
        module.to(dtype)
        expected = module(residual + x)
        for impl in IMPLS:
            with K.use(impl):
                normed, summed = layers.add_norm(module, x, residual)
            sum_matches(summed, residual + x, impl)
            if impl == "reference" and dtype == torch.float32:
                assert torch.equal(normed, expected), type(module).__name__
            else:  # module(summed): the interpreter's bf16 sum may be one step off (sum_matches)
                torch.testing.assert_close(normed, module(summed), rtol=tol, atol=tol)
    monkeypatch.setattr(K, "add_norm", lambda *args: pytest.fail("a wrapped norm ran fused"))
    wrapper = nn.Sequential(modules[2])
    normed, summed = layers.add_norm(wrapper, x, residual)
    assert torch.equal(summed, residual + x) and torch.equal(normed, wrapper(residual + x))


def test_eps_and_offset_matter() -> None:
    """eps enters under the root (visible on tiny rows); offset 1 scales by (1 + w)."""
    x, residual = torch.randn(4, 16) * 1e-3, torch.randn(4, 16) * 1e-3
    weight = torch.randn(16)
    for impl in IMPLS:
        with K.use(impl):
            small, _ = K.add_norm(x, residual, weight, None, EPS, "rms", 0.0)
            big, _ = K.add_norm(x, residual, weight, None, 1e-2, "rms", 0.0)
            shifted, _ = K.add_norm(x, residual, weight, None, EPS, "rms", 1.0)
            unit, _ = K.add_norm(x, residual, torch.ones(16), None, EPS, "rms", 0.0)
        assert (big - small).abs().max() > 1e-2
        torch.testing.assert_close(shifted - small, unit, rtol=1e-5, atol=1e-5)


def test_launch_sizes_and_wide_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole row in one program (several rows when narrow); rows wider than MAX_DIM take the reference."""
    module = sys.modules["embzoo.kernels.add_norm"]
    assert module.add_norm_launch_sizes(8192, 1024) == (4, 1024, 8)
    assert module.add_norm_launch_sizes(3, 100) == (4, 128, 4)
    assert module.add_norm_launch_sizes(5, 5000) == (1, 8192, 16)
    monkeypatch.setattr(module, "MAX_DIM", 32)
    monkeypatch.setattr(module, "_add_norm_op", lambda *args: pytest.fail("the Triton kernel ran on a wide row"))
    args = inputs(3, 48, torch.float32, "layer", 0.0, True)
    with K.use("triton"):
        normed, _ = K.add_norm(*args)
    torch.testing.assert_close(normed.double(), oracle(rounded_sum(*args[:2]), *args[2:]), rtol=1e-5, atol=1e-5)


def test_auto_on_cpu_and_autograd_use_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "auto" takes the reference on CPU (differentiable); forced "triton" refuses when the weight needs a gradient."""
    monkeypatch.setattr(K, "add_norm_triton", lambda *args: pytest.fail("the Triton implementation was called"))
    x, residual, _, bias, eps, kind, offset = inputs(3, 8, torch.float64, "layer", 0.0, True)
    weight = torch.randn(8, dtype=torch.float64, requires_grad=True)
    weight_oracle = weight.detach().clone().requires_grad_()
    with K.use("auto"):
        normed, _ = K.add_norm(x, residual, weight, bias, eps, kind, offset)
    (normed * torch.arange(8)).sum().backward()
    (oracle(residual + x, weight_oracle, bias, eps, kind, offset) * torch.arange(8)).sum().backward()
    torch.testing.assert_close(weight.grad, weight_oracle.grad)
    with K.use("triton"), pytest.raises(RuntimeError, match="no backward"):
        K.add_norm(x, residual, weight, bias, eps, kind, offset)


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_bad_arguments(impl: str) -> None:
    x, w = torch.zeros(4, 8), torch.ones(8)
    with K.use(impl), pytest.raises(ValueError, match="unknown norm kind 'batch'; expected one of rms, layer"):
        K.add_norm(x, x, w, None, EPS, "batch", 0.0)
    with K.use(impl), pytest.raises(ValueError, match="offset applies to kind 'rms' only"):
        K.add_norm(x, x, w, None, EPS, "layer", 1.0)
    with K.use(impl), pytest.raises(ValueError, match="'rms' takes no bias"):
        K.add_norm(x, x, w, w, EPS, "rms", 0.0)
    with K.use(impl), pytest.raises(ValueError, match="2-D floating"):
        K.add_norm(x[None], x[None], w, None, EPS, "rms", 0.0)
    with K.use(impl), pytest.raises(ValueError, match="residual must match x"):
        K.add_norm(x, x.half(), w, None, EPS, "rms", 0.0)
    with K.use(impl), pytest.raises(ValueError, match="residual's last dim must be contiguous"):
        K.add_norm(x, torch.zeros(8, 4).t(), w, None, EPS, "rms", 0.0)
    with K.use(impl), pytest.raises(ValueError, match=r"bias must be a floating \[dim\] = \[8\]"):
        K.add_norm(x, x, w, torch.ones(4), EPS, "layer", 0.0)


def test_op_schema() -> None:
    """A functional op: x and residual are read, two new tensors returned (fake-tensor checks need a GPU, below)."""
    op = sys.modules["embzoo.kernels.add_norm"]._add_norm_op
    assert str(torch.ops.embzoo.add_norm.default._schema) == (
        "embzoo::add_norm(Tensor x, Tensor residual, Tensor weight, Tensor? bias, float eps, str kind, float offset)"
        " -> (Tensor, Tensor)"
    )
    args = inputs(5, 12, torch.float32, "layer", 0.0, True)
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("kind, offset, with_bias", NORMS, ids=str)
def test_cuda_matches_reference(kind: str, offset: float, with_bias: bool) -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: bf16 [8192, 1024] (Qwen3-0.6B's hidden) and fp32 [37, 5000]
    (one row per program). summed is torch's add bit for bit; normed within one bf16 step of the reference (both round
    once from fp32) and of the unfused F.layer_norm / F.rms_norm (offset 0) on CUDA."""
    for tokens, dim, dtype in ((8192, 1024, torch.bfloat16), (37, 5000, torch.float32)):
        args = tuple(
            t.cuda() if isinstance(t, torch.Tensor) else t for t in inputs(tokens, dim, dtype, kind, offset, with_bias)
        )
        x, residual, weight, bias = args[:4]
        with K.use("triton"):
            normed, summed = K.add_norm(*args)
        expected, expected_sum = add_norm_ref(*args)
        assert torch.equal(summed, expected_sum)
        tol = 1.6e-2 if dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(normed, expected, rtol=tol, atol=tol)
        if kind == "layer":
            torch.testing.assert_close(normed, F.layer_norm(summed, (dim,), weight, bias, EPS), rtol=tol, atol=tol)
        elif not offset:
            torch.testing.assert_close(normed, F.rms_norm(summed, (dim,), weight, EPS), rtol=tol, atol=tol)
    op = sys.modules["embzoo.kernels.add_norm"]._add_norm_op
    torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))

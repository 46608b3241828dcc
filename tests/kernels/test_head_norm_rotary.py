"""head_norm_rotary (Triton vs reference vs a formula written here): per-head RMSNorm + rotary, strided in, new out."""

import sys

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels.head_norm_rotary import head_norm_rotary_ref

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["triton", "reference"]
EPS = 1e-6


def cos_sin(tokens: int, rotary_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [T, r/2] tables for positions 0, 3, 6, ... at base 10000."""
    inv_freq = 1.0 / 1e4 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = (torch.arange(tokens, dtype=torch.float64) * 3)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def formula(x, weight, eps, offset, cos, sin) -> torch.Tensor:
    """float64, element by element as the contract reads: x / sqrt(mean(x²) + eps) · (offset + w), then
    (y1, y2) -> (y1 cos - y2 sin, y2 cos + y1 sin) on pairs (j, j + r/2), j < r/2."""
    y = x.double().clone()
    if weight is not None:
        rms = (y.pow(2).sum(-1, keepdim=True) / y.shape[-1] + eps).sqrt()
        y = y / rms * (offset + weight.double())
    if cos is not None:
        out = y.clone()
        for j in range(cos.shape[1]):
            c, s = cos[:, j, None].double(), sin[:, j, None].double()
            a, b = y[..., j], y[..., j + cos.shape[1]]
            out[..., j], out[..., j + cos.shape[1]] = a * c - b * s, b * c + a * s
        y = out
    return y


def fused_views(tokens: int, heads: int, kv_heads: int, dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """q [T, H, d] and k [T, Hkv, d] as strided views into one fused [T, (H + 2 Hkv) d] projection output."""
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim).to(dtype)
    nq, nk = heads * dim, kv_heads * dim
    return qkv, qkv[:, :nq].view(tokens, heads, dim), qkv[:, nq : nq + nk].view(tokens, kv_heads, dim)


def tolerance(dtype: torch.dtype) -> float:
    """fp32: float rounding; fp16/bf16: the one final rounding of values of magnitude up to ~10."""
    return {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 8e-2}[dtype]


def check(x, weight, offset, cos, sin) -> None:
    expected = formula(x, weight, EPS, offset, cos, sin)
    snapshot = x.clone()
    tol = tolerance(x.dtype)
    for impl in IMPLS:
        with K.use(impl):
            got = K.head_norm_rotary(x, weight, EPS, offset, cos, sin)
        assert got.dtype == x.dtype and got.shape == x.shape and got.is_contiguous()
        assert got.numel() == 0 or got.data_ptr() != x.data_ptr(), "the result must be a new tensor"
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
    assert torch.equal(x, snapshot), "the input must be left alone"


# (heads, kv_heads, head_dim d, rotary dims r; 0 = no rotary)
SHAPES = [(1, 1, 16, 16), (3, 1, 32, 32), (5, 5, 48, 48), (4, 2, 64, 32), (2, 1, 48, 16), (3, 3, 32, 0)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("heads, kv_heads, dim, rotary_dim", SHAPES, ids=str)
@pytest.mark.parametrize("tokens", [0, 1, 9])
def test_norm_and_rotary_on_fused_qkv_views(tokens, heads, kv_heads, dim, rotary_dim, dtype) -> None:
    qkv, q, k = fused_views(tokens, heads, kv_heads, dim, dtype)
    original = qkv.clone()
    cos, sin = cos_sin(tokens, rotary_dim) if rotary_dim else (None, None)
    for view, offset in ((q, 0.0), (k, 1.0)):
        weight = torch.randn(dim) * 0.5 + (1 - offset)
        check(view, weight.to(dtype), offset, cos, sin)
    assert torch.equal(qkv, original)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim, rotary_dim", [(16, 16), (48, 32)], ids=str)
def test_rotary_only_and_copy_only(dim: int, rotary_dim: int, dtype: torch.dtype) -> None:
    """weight=None skips the norm (rope without q/k norms); cos=sin=None skips rotary (a contiguous copy)."""
    _, q, _ = fused_views(7, 3, 1, dim, dtype)
    check(q, None, 0.0, *cos_sin(7, rotary_dim))
    check(q, None, 0.0, None, None)
    for impl in IMPLS:
        with K.use(impl):
            assert torch.equal(K.head_norm_rotary(q, None, EPS, 0.0, None, None), q)


@pytest.mark.parametrize("dim, rotary_dim", [(48, 16), (64, 16)], ids=str)
def test_partial_rotary_on_a_long_pack(dim: int, rotary_dim: int) -> None:
    """Partial rotary makes a head tile 2·8 + 32 or 2·8 + 64 columns wide, not a power of two; with enough tokens
    the token block is still one (tl.arange: compiled or interpreted, Triton refuses any other size)."""
    _, q, _ = fused_views(100, 2, 1, dim, torch.float32)
    block_t = sys.modules["embzoo.kernels.head_norm_rotary"].head_norm_rotary_launch_sizes(
        100, 2, dim, rotary_dim // 2
    )[0]
    assert block_t > 16 and block_t & (block_t - 1) == 0
    check(q, torch.randn(dim), 0.0, *cos_sin(100, rotary_dim))


def test_weight_offset_and_eps_matter() -> None:
    """offset 1 scales by (1 + w) (Gemma), offset 0 by w; eps enters under the root (visible on tiny rows)."""
    x = torch.randn(4, 2, 16) * 1e-3
    weight = torch.randn(16)
    for impl in IMPLS:
        with K.use(impl):
            plain = K.head_norm_rotary(x, weight, EPS, 0.0, None, None)
            shifted = K.head_norm_rotary(x, weight, EPS, 1.0, None, None)
            big_eps = K.head_norm_rotary(x, weight, 1e-2, 0.0, None, None)
        torch.testing.assert_close(shifted - plain, K.head_norm_rotary(x, torch.zeros(16), EPS, 1.0, None, None))
        assert (big_eps - plain).abs().max() > 1e-2
        torch.testing.assert_close(big_eps.double(), formula(x, weight, 1e-2, 0.0, None, None), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target_programs", [1, 2])
def test_several_heads_per_program(monkeypatch: pytest.MonkeyPatch, target_programs: int) -> None:
    """Long packs put several heads in one program (cos/sin and weight loaded once): all heads, or 2 + 1."""
    module = sys.modules["embzoo.kernels.head_norm_rotary"]
    monkeypatch.setattr(module, "_TARGET_PROGRAMS", target_programs)
    assert module.head_norm_rotary_launch_sizes(7, 3, 48, 16)[3] == (3 if target_programs == 1 else 2)
    _, q, _ = fused_views(7, 3, 1, 48, torch.float32)
    check(q, torch.randn(48), 0.0, *cos_sin(7, 32))


def test_triton_matches_reference_closely_and_strided_tables() -> None:
    """cos/sin may be column slices of a wider cache; fp32 Triton and reference agree to float rounding."""
    cache = torch.randn(11, 2, 24)
    cos, sin = cache[:, 0], cache[:, 1]
    _, q, _ = fused_views(11, 4, 2, 64, torch.float32)
    weight = torch.randn(64)
    with K.use("triton"):
        got_triton = K.head_norm_rotary(q, weight, EPS, 1.0, cos, sin)
    got_ref = head_norm_rotary_ref(q, weight, EPS, 1.0, cos, sin)
    torch.testing.assert_close(got_triton, got_ref, rtol=1e-6, atol=1e-6)


def test_auto_on_cpu_and_autograd_use_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """ "auto" takes the reference on CPU; forced "triton" refuses when the weight needs a gradient."""

    def fail(*args: object) -> None:
        raise AssertionError("the Triton implementation was called")

    monkeypatch.setattr(K, "head_norm_rotary_triton", fail)
    x, weight = torch.randn(3, 2, 8), torch.randn(8, requires_grad=True)
    with K.use("auto"):
        got = K.head_norm_rotary(x, weight, EPS, 0.0, *cos_sin(3, 8))
    got.sum().backward()
    assert weight.grad is not None
    with K.use("triton"), pytest.raises(RuntimeError, match="no backward"):
        K.head_norm_rotary(x, weight, EPS, 0.0, None, None)


@pytest.mark.parametrize("impl", IMPLS)
def test_rejects_bad_arguments(impl: str) -> None:
    cos, sin = cos_sin(4, 8)
    x = torch.zeros(4, 2, 8)
    with K.use(impl), pytest.raises(ValueError, match="3-D"):
        K.head_norm_rotary(torch.zeros(4, 16), None, EPS, 0.0, cos, sin)
    with K.use(impl), pytest.raises(ValueError, match=r"weight must be a floating \[head_dim\] = \[8\]"):
        K.head_norm_rotary(x, torch.zeros(16), EPS, 0.0, cos, sin)
    with K.use(impl), pytest.raises(ValueError, match="both be given"):
        K.head_norm_rotary(x, None, EPS, 0.0, cos, None)
    with K.use(impl), pytest.raises(ValueError, match="do not fit"):
        K.head_norm_rotary(torch.zeros(5, 2, 8), None, EPS, 0.0, cos, sin)
    with K.use(impl), pytest.raises(ValueError, match="same 2-D shape"):
        K.head_norm_rotary(x, None, EPS, 0.0, cos, sin[:, :2])
    with K.use(impl), pytest.raises(ValueError, match="do not fit"):
        K.head_norm_rotary(torch.zeros(4, 2, 6), None, EPS, 0.0, cos, sin)


def test_op_schema() -> None:
    """A functional op: optional weight and tables, a new tensor out (fake-tensor checks need a GPU, below)."""
    op = sys.modules["embzoo.kernels.head_norm_rotary"]._head_norm_rotary_op
    assert str(torch.ops.embzoo.head_norm_rotary.default._schema) == (
        "embzoo::head_norm_rotary(Tensor x, Tensor? weight, float eps, float offset, Tensor? cos, Tensor? sin)"
        " -> Tensor"
    )
    x = torch.randn(5, 3, 2, 8)[:, 1]
    torch.library.opcheck(
        op, (x, torch.randn(8), EPS, 1.0, *cos_sin(5, 8)), test_utils=("test_schema", "test_autograd_registration")
    )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_qwen3_shape_matches_reference() -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: bf16, T=4096, H=16 (Hkv=8), d=128 as in Qwen3-0.6B.

    Both round once from fp32, so they differ by at most one bf16 step (2^-7 relative) where the fp32
    values straddle a rounding boundary: tolerance atol=rtol=1.6e-2."""
    tokens, heads, kv_heads, dim = 4096, 16, 8, 128
    qkv = torch.randn(tokens, (heads + 2 * kv_heads) * dim, device="cuda", dtype=torch.bfloat16)
    q = qkv[:, : heads * dim].view(tokens, heads, dim)
    k = qkv[:, heads * dim : (heads + kv_heads) * dim].view(tokens, kv_heads, dim)
    positions = torch.arange(tokens, dtype=torch.float64) % 700
    inv_freq = 1.0 / 1e6 ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().float().cuda(), angles.sin().float().cuda()
    weight = (torch.randn(dim, device="cuda") * 0.3 + 1).to(torch.bfloat16)
    for view, offset in ((q, 0.0), (k, 1.0)):
        with K.use("triton"):
            got = K.head_norm_rotary(view, weight, EPS, offset, cos, sin)
        expected = head_norm_rotary_ref(view, weight, EPS, offset, cos, sin)
        torch.testing.assert_close(got, expected, rtol=1.6e-2, atol=1.6e-2)
        with K.use("triton"):
            rotated = K.head_norm_rotary(view, None, EPS, 0.0, cos, sin)
        torch.testing.assert_close(
            rotated, head_norm_rotary_ref(view, None, EPS, 0.0, cos, sin), rtol=1.6e-2, atol=1.6e-2
        )
    op = sys.modules["embzoo.kernels.head_norm_rotary"]._head_norm_rotary_op
    torch.library.opcheck(
        op, (q[:50], weight, EPS, 0.0, cos[:50], sin[:50]), test_utils=("test_schema", "test_faketensor")
    )

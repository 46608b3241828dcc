"""rotary (Triton vs reference vs a complex-number oracle): in place, partial rotary, dtypes, strided views."""

import sys

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels.rotary import rotary_ref

TOKENS = [0, 1, 7, 33]
HEADS = [1, 3]
DIMS = [(8, 8), (12, 12), (12, 8), (64, 64), (64, 32)]  # (head_dim d, rotary dims r)
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
IMPLS = ["triton", "reference"]


def cos_sin(tokens: int, rotary_dim: int, theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [T, r/2] tables for positions 0, 3, 6, ... (packed sequences restart positions; any angle will do)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = (torch.arange(tokens, dtype=torch.float64) * 3)[:, None] * inv_freq[None, :]
    return angles.cos().float(), angles.sin().float()


def oracle_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """float64 copy of x with (x1 + i x2) * (cos + i sin) on the first r dims of every head."""
    half = cos.shape[1]
    out = x.double().clone()
    z = torch.complex(out[..., :half], out[..., half : 2 * half])
    z = z * torch.complex(cos.double(), sin.double())[:, None, :]
    out[..., :half], out[..., half : 2 * half] = z.real, z.imag
    return out


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 1e-2


def run(impl: str, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    with K.use(impl):
        out = K.rotary(x, cos, sin)
    assert out is x, "rotary must return its (mutated) input"
    return out


def check_rotary(tokens: int, heads: int, dim: int, rotary_dim: int, dtype: torch.dtype) -> None:
    x = torch.randn(tokens, heads, dim).to(dtype)
    cos, sin = cos_sin(tokens, rotary_dim)
    expected = oracle_rotary(x, cos, sin)
    tol = tolerance(dtype)
    for impl in IMPLS:
        got = run(impl, x.clone(), cos, sin)
        assert got.dtype == dtype and got.shape == (tokens, heads, dim)
        torch.testing.assert_close(got.double(), expected, rtol=tol, atol=tol)
        assert torch.equal(got[..., rotary_dim:], x[..., rotary_dim:]), "dims past r must be untouched"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("dim, rotary_dim", DIMS, ids=str)
@pytest.mark.parametrize("heads", HEADS)
@pytest.mark.parametrize("tokens", TOKENS)
def test_rotary_shapes(tokens: int, heads: int, dim: int, rotary_dim: int, dtype: torch.dtype) -> None:
    check_rotary(tokens, heads, dim, rotary_dim, dtype)


@pytest.mark.parametrize("target_programs", [1, 2])
def test_rotary_several_heads_per_program(monkeypatch: pytest.MonkeyPatch, target_programs: int) -> None:
    """Long packs put several heads in one program (cos/sin loaded once): all heads, or 2 + a 1-head tail."""
    rotary_module = sys.modules["embzoo.kernels.rotary"]
    monkeypatch.setattr(rotary_module, "_TARGET_PROGRAMS", target_programs)
    assert rotary_module.rotary_launch_sizes(7, 3, 4)[2] == (3 if target_programs == 1 else 2)
    check_rotary(7, 3, 12, 8, torch.float32)
    check_rotary(7, 3, 64, 64, torch.bfloat16)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("impl", IMPLS)
def test_rotary_writes_through_fused_qkv_view(impl: str, dtype: torch.dtype) -> None:
    """q and k unbound from a fused [T, 3, H, d] projection: strided rows, results land in the parent."""
    tokens, heads, dim, rotary_dim = 9, 3, 12, 8
    qkv = torch.randn(tokens, 3, heads, dim).to(dtype)
    original = qkv.clone()
    cos, sin = cos_sin(tokens, rotary_dim)
    q, k, _ = qkv.unbind(1)
    assert not q.is_contiguous() and q.stride(0) == 3 * heads * dim
    run(impl, q, cos, sin)
    run(impl, k, cos, sin)
    tol = tolerance(dtype)
    for i in (0, 1):
        torch.testing.assert_close(qkv[:, i].double(), oracle_rotary(original[:, i], cos, sin), rtol=tol, atol=tol)
    assert torch.equal(qkv[:, 2], original[:, 2]), "v must be untouched"
    assert torch.equal(qkv[..., rotary_dim:], original[..., rotary_dim:])


def test_rotary_strided_cos_sin_and_triton_matches_reference() -> None:
    """cos/sin may be column slices of a wider cache; Triton and reference agree closely on fp32."""
    tokens, heads, dim = 17, 2, 64
    cache = torch.randn(tokens, 2, dim // 2)
    cos, sin = cache[:, 0], cache[:, 1]
    x = torch.randn(tokens, heads, dim)
    got_triton = run("triton", x.clone(), cos, sin)
    got_ref = run("reference", x.clone(), cos, sin)
    torch.testing.assert_close(got_triton, got_ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_triton.double(), oracle_rotary(x, cos, sin), rtol=1e-5, atol=1e-5)


def test_rotary_auto_on_cpu_uses_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("the Triton implementation was called")

    monkeypatch.setattr(K, "rotary_triton", fail)
    x = torch.randn(3, 2, 8)
    cos, sin = cos_sin(3, 8)
    with K.use("auto"):
        got = K.rotary(x.clone(), cos, sin)
    torch.testing.assert_close(got.double(), oracle_rotary(x, cos, sin))


@pytest.mark.parametrize("impl", IMPLS)
def test_rotary_rejects_bad_arguments(impl: str) -> None:
    cos, sin = cos_sin(4, 8)
    with K.use(impl), pytest.raises(ValueError, match="3-D"):
        K.rotary(torch.zeros(4, 16), cos, sin)
    with K.use(impl), pytest.raises(ValueError, match="same 2-D shape"):
        K.rotary(torch.zeros(4, 2, 8), cos, sin[:, :2])
    with K.use(impl), pytest.raises(ValueError, match="do not fit"):
        K.rotary(torch.zeros(5, 2, 8), cos, sin)
    with K.use(impl), pytest.raises(ValueError, match="do not fit"):
        K.rotary(torch.zeros(4, 2, 6), cos, sin)


def test_rotary_op_schema_declares_the_mutation() -> None:
    """The registered op mutates x and returns nothing (fake-tensor checks need a real GPU, see below)."""
    op = sys.modules["embzoo.kernels.rotary"]._rotary_op
    assert str(torch.ops.embzoo.rotary.default._schema) == "embzoo::rotary(Tensor(a0!) x, Tensor cos, Tensor sin) -> ()"
    x = torch.randn(5, 3, 2, 8)[:, 1]
    cos, sin = cos_sin(5, 8)
    torch.library.opcheck(op, (x, cos, sin), test_utils=("test_schema", "test_autograd_registration"))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dim, rotary_dim", [(64, 64), (80, 40), (128, 64)], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rotary_cuda_matches_reference(dtype: torch.dtype, dim: int, rotary_dim: int) -> None:
    """Run with TRITON_INTERPRET=0 on a CUDA machine: compiled kernel vs reference on a large ragged pack."""
    lengths = torch.randint(1, 700, (37,)).tolist()
    heads = 12
    positions = torch.cat([torch.arange(n) for n in lengths]).double()
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim)
    angles = positions[:, None] * inv_freq[None, :]
    cos, sin = angles.cos().float().cuda(), angles.sin().float().cuda()
    qkv = torch.randn(sum(lengths), 3, heads, dim, device="cuda").to(dtype)
    expected = qkv.clone()
    for i in (0, 1):
        rotary_ref(expected[:, i], cos, sin)
        K.rotary(qkv[:, i], cos, sin)
    tol = tolerance(dtype)
    torch.testing.assert_close(qkv, expected, rtol=tol, atol=tol)
    assert torch.equal(qkv[:, 2], expected[:, 2])
    op = sys.modules["embzoo.kernels.rotary"]._rotary_op
    x = torch.randn(50, 3, heads, dim, device="cuda").to(dtype)[:, 0]
    torch.library.opcheck(op, (x, cos[:50], sin[:50]), test_utils=("test_schema", "test_faketensor"))

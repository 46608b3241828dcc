"""Packed attention backends vs a float64 per-sequence loop, plus backend selection rules."""

from __future__ import annotations

import pytest
import torch

from embzoo.modeling import attention as attn_mod
from embzoo.modeling.attention import (
    BACKENDS,
    ENV_VAR,
    attention,
    available_backends,
    requested_features,
    resolve_backend,
)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (lengths, H, Hkv, d)
SHAPES = [
    ((5, 1, 17, 3), 4, 4, 8),
    ((23,), 4, 2, 16),
    ((1, 1, 9, 1), 4, 1, 8),
    ((3, 0, 6), 4, 2, 16),
]

FEATURES = {
    "plain": {},
    "causal": {"causal": True},
    "window": {"window": (3, 2)},
    "window_left": {"window": (4, -1)},
    "window_right": {"window": (-1, 2)},
    "window_self": {"window": (0, 0)},
    "causal_window": {"causal": True, "window": (3, 5)},
    "alibi": {"alibi": True},
    "alibi_causal": {"alibi": True, "causal": True},
    "softcap": {"softcap": 0.7},
    "scale": {"scale": 0.3},
    "softcap_alibi_window_scale": {"softcap": 1.5, "alibi": True, "window": (2, 3), "scale": 0.6},
    "everything": {"causal": True, "softcap": 2.0, "alibi": True, "window": (4, -1), "scale": 0.9},
}


@pytest.fixture(autouse=True)
def _no_env_override(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)


def naive_attention(q, k, v, lengths, *, causal=False, window=None, alibi=None, scale=None, softcap=None):
    """Float64 reference: one softmax per sequence and head, written straight from the definitions."""
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float64)
    start = 0
    for n in lengths:
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if causal:
            allowed &= j <= i
        if window is not None:
            if window[0] >= 0:
                allowed &= j >= i - window[0]
            if window[1] >= 0:
                allowed &= j <= i + window[1]
        for h in range(heads):
            qs = q[start : start + n, h].double()
            ks = k[start : start + n, h // group].double()
            vs = v[start : start + n, h // group].double()
            s = qs @ ks.T * scale
            if softcap is not None:
                s = softcap * torch.tanh(s / softcap)
            if alibi is not None:
                s = s - alibi[h].double() * (i - j).abs()
            p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
            out[start : start + n, h] = p @ vs
        start += n
    return out


def make_inputs(lengths, heads, kv_heads, dim, dtype=torch.float32, device="cpu", seed=0):
    """Random packed q [T, H, d], k/v [T, Hkv, d], cu_seqlens int32 [B+1], ALiBi-like slopes [H]."""
    gen = torch.Generator().manual_seed(seed)
    total = sum(lengths)
    q = torch.randn(total, heads, dim, generator=gen)
    k = torch.randn(total, kv_heads, dim, generator=gen)
    v = torch.randn(total, kv_heads, dim, generator=gen)
    cu = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32)
    slopes = 2.0 ** (-8.0 * torch.arange(1, heads + 1) / heads)
    to = {"device": device}
    return (
        q.to(dtype=dtype, **to),
        k.to(dtype=dtype, **to),
        v.to(dtype=dtype, **to),
        cu.to(**to),
        slopes.to(**to),
    )


def run_case(backend, shape, feats, dtype=torch.float32, device="cpu"):
    """(backend output, float64 oracle on CPU) for one shape and feature set."""
    lengths, heads, kv_heads, dim = shape
    q, k, v, cu, slopes = make_inputs(lengths, heads, kv_heads, dim, dtype, device)
    kwargs = {key: val for key, val in feats.items() if key != "alibi"}
    alibi = slopes if feats.get("alibi") else None
    out = attention(q, k, v, cu, max(lengths), alibi_slopes=alibi, backend=backend, **kwargs)
    ref = naive_attention(q.cpu(), k.cpu(), v.cpu(), lengths, alibi=None if alibi is None else slopes.cpu(), **kwargs)
    return out, ref


def _case_id(case):
    backend, (lengths, heads, kv_heads, dim), feats = case
    name = next(key for key, val in FEATURES.items() if val is feats)
    return f"{backend}-{name}-L{'-'.join(map(str, lengths))}_H{heads}kv{kv_heads}d{dim}"


# sdpa: every feature set on every shape. flex (eager on CPU, a dynamo retrace per new feature set):
# every feature set on the GQA ragged shape, and every other shape with all features at once.
CASES = [("sdpa", shape, feats) for shape in SHAPES for feats in FEATURES.values()]
CASES += [("flex", SHAPES[3], feats) for feats in FEATURES.values()]
CASES += [("flex", shape, FEATURES["everything"]) for shape in SHAPES[:3]]


@pytest.mark.parametrize("case", CASES, ids=[_case_id(case) for case in CASES])
def test_matches_naive_fp32(case):
    out, ref = run_case(*case)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("feats", [{}, {"causal": True, "alibi": True}, {"softcap": 1.0, "window": (2, 2)}])
def test_sdpa_low_precision_keeps_dtype(feats):
    out, ref = run_case("sdpa", SHAPES[0], feats, dtype=torch.bfloat16)
    assert out.dtype == torch.bfloat16
    assert (out.double() - ref).abs().max().item() <= 3e-2


@pytest.mark.parametrize("feats", [{"window": (0, 0)}, {"window": (1, 0), "softcap": 1.0, "alibi": True}])
def test_sdpa_padding_rows_leak_no_nan_into_grads(feats):
    lengths, heads, kv_heads, dim = (1, 7, 2), 4, 2, 8
    q, k, v, cu, slopes = make_inputs(lengths, heads, kv_heads, dim)
    for x in (q, k, v):
        x.requires_grad_(True)
    alibi = slopes if feats.get("alibi") else None
    kwargs = {key: val for key, val in feats.items() if key != "alibi"}
    attention(q, k, v, cu, 7, alibi_slopes=alibi, **kwargs).sum().backward()
    assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def test_requested_features():
    assert requested_features() == frozenset()
    assert requested_features(window=(-1, -1), softcap=0.0) == frozenset()
    got = requested_features(causal=True, window=(4, 0), alibi_slopes=torch.ones(2), softcap=30.0)
    assert got == {"causal", "window", "alibi", "softcap"}


def test_auto_picks_sdpa_on_cpu():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert resolve_backend("cpu", dtype) == "sdpa"
        assert resolve_backend("cpu", dtype, {"alibi", "softcap"}) == "sdpa"
    assert available_backends("cpu", torch.float32) == ["flex", "sdpa"]


def test_auto_preference_on_cuda(monkeypatch):
    monkeypatch.setattr(attn_mod, "_flash_varlen_func", lambda: None)
    monkeypatch.setattr(attn_mod, "_varlen_api", lambda: (object(), True))
    assert resolve_backend("cuda", torch.bfloat16) == "varlen"
    assert resolve_backend("cuda", torch.float16, {"causal", "window"}) == "varlen"
    assert resolve_backend("cuda", torch.bfloat16, {"alibi"}) == "flex"
    assert resolve_backend("cuda", torch.bfloat16, {"softcap"}) == "flex"
    assert resolve_backend("cuda", torch.float32) == "flex"  # not the padded reference: it materializes S×S
    monkeypatch.setattr(attn_mod, "_flash_varlen_func", lambda: object())
    assert resolve_backend("cuda", torch.bfloat16, {"alibi", "softcap"}) == "flash"


def test_env_var_forces_backend(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "flex")
    assert resolve_backend("cpu", torch.float32) == "flex"
    calls = []
    monkeypatch.setitem(attn_mod._IMPLS, "flex", lambda *a, **kw: calls.append("flex") or a[0])
    q, k, v, cu, _ = make_inputs((3, 2), 2, 2, 8)
    attention(q, k, v, cu, 3)
    assert calls == ["flex"]


def test_argument_beats_env(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "varlen")
    assert resolve_backend("cpu", torch.float32, backend="sdpa") == "sdpa"
    out, ref = run_case("sdpa", SHAPES[0], FEATURES["alibi_causal"])
    assert (out.double() - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("where", ["argument", "env"])
def test_unknown_backend_lists_names(monkeypatch, where):
    backend = "triton" if where == "argument" else None
    if where == "env":
        monkeypatch.setenv(ENV_VAR, "triton")
    with pytest.raises(ValueError, match="triton") as err:
        resolve_backend("cpu", torch.float32, backend=backend)
    assert all(name in str(err.value) for name in BACKENDS)


def test_forced_varlen_on_cpu_raises():
    q, k, v, cu, _ = make_inputs((3, 2), 2, 2, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="varlen.*CUDA") as err:
        attention(q, k, v, cu, 3, backend="varlen")
    assert "sdpa" in str(err.value)


def test_forced_varlen_with_alibi_names_alibi():
    q, k, v, cu, slopes = make_inputs((3, 2), 2, 2, 8)
    with pytest.raises(ValueError, match="does not support alibi") as err:
        attention(q, k, v, cu, 3, alibi_slopes=slopes, backend="varlen")
    assert "flex, sdpa" in str(err.value)
    with pytest.raises(ValueError, match="does not support softcap"):
        resolve_backend("cuda", torch.bfloat16, {"softcap"}, backend="varlen")


def test_forced_flash_on_cpu_raises():
    with pytest.raises(ValueError, match="flash.*CUDA.*float16"):
        resolve_backend("cpu", torch.float32, backend="flash")


@pytest.mark.parametrize(
    "bad",
    [
        {"window": (-2, 3)},
        {"softcap": -1.0},
        {"alibi_slopes": torch.ones(3)},
    ],
)
def test_bad_arguments_raise(bad):
    q, k, v, cu, _ = make_inputs((3, 2), 2, 2, 8)
    with pytest.raises(ValueError):
        attention(q, k, v, cu, 3, **bad)


def test_kv_heads_must_divide_q_heads():
    q, _, _, cu, _ = make_inputs((3, 2), 4, 4, 8)
    kv = torch.randn(5, 3, 8)
    with pytest.raises(ValueError, match="divide"):
        attention(q, kv, kv, cu, 3)


GPU_FEATURES = {
    name: FEATURES[name]
    for name in ("plain", "causal", "window", "causal_window", "alibi", "softcap", "scale", "everything")
}
GPU_SHAPES = [((5, 1, 130, 37), 4, 2, 64), ((300,), 8, 1, 128), ((1, 64, 257), 4, 4, 64)]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["flash", "varlen", "flex"])
@pytest.mark.parametrize("shape", GPU_SHAPES, ids=lambda s: f"B{len(s[0])}_H{s[1]}kv{s[2]}d{s[3]}")
@pytest.mark.parametrize("feats", GPU_FEATURES.values(), ids=GPU_FEATURES.keys())
def test_cuda_backend_matches_sdpa_bf16(backend, shape, feats):
    features = requested_features(
        causal=feats.get("causal", False),
        window=feats.get("window"),
        alibi_slopes=torch.ones(1) if feats.get("alibi") else None,
        softcap=feats.get("softcap"),
    )
    if backend not in available_backends("cuda", torch.bfloat16, features):
        pytest.skip(f"{backend} cannot run {sorted(features)} here")
    out, ref = run_case(backend, shape, feats, dtype=torch.bfloat16, device="cuda")
    base, _ = run_case("sdpa", shape, feats, dtype=torch.bfloat16, device="cuda")
    assert out.dtype == torch.bfloat16 and out.shape == base.shape
    torch.testing.assert_close(out.float(), base.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double().cpu(), ref, atol=2e-2, rtol=2e-2)


def test_flex_block_mask_is_built_once_per_forward(monkeypatch):
    """Every layer passes the same cu_seqlens: one mask per forward and window, rebuilt for a new batch."""
    built = []
    real = attn_mod.create_block_mask
    monkeypatch.setattr(attn_mod, "create_block_mask", lambda *a, **kw: built.append(1) or real(*a, **kw))
    q, k, v, cu, _ = make_inputs((5, 3), 2, 2, 8)
    first = attention(q, k, v, cu, 5, backend="flex")
    for _ in range(3):
        torch.testing.assert_close(attention(q, k, v, cu, 5, backend="flex"), first)
    attention(q, k, v, cu, 5, window=(1, 1), backend="flex")
    assert len(built) == 2
    attention(q, k, v, cu.clone(), 5, backend="flex")
    assert len(built) == 3


def test_flex_block_mask_under_inference_mode(monkeypatch):
    """Embedder.encode packs its batches under inference_mode: cu_seqlens is then an inference tensor
    (no version counter); the mask is still built once per forward and the result is unchanged."""
    built = []
    real = attn_mod.create_block_mask
    monkeypatch.setattr(attn_mod, "create_block_mask", lambda *a, **kw: built.append(1) or real(*a, **kw))
    q, k, v, cu, _ = make_inputs((5, 3), 2, 2, 8)
    want = attention(q, k, v, cu, 5, backend="flex")
    with torch.inference_mode():
        cu_inference = cu.clone()
        for _ in range(2):
            torch.testing.assert_close(attention(q, k, v, cu_inference, 5, backend="flex"), want)
    assert len(built) == 2

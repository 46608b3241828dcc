"""Packed attention backends vs a float64 per-sequence loop, plus backend selection rules."""

from __future__ import annotations

import gc

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
from embzoo.modeling.batch import TokenRows

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

# (lengths, H, Hkv, d)
SHAPES = [
    ((5, 1, 17, 3), 4, 4, 8),
    ((23,), 4, 2, 16),
    ((1, 1, 9, 1), 4, 1, 8),
    ((3, 0, 6), 4, 2, 16),
    ((4, 4, 4, 2, 2, 7, 0, 0, 3), 4, 2, 8),  # runs of equal lengths (the CPU's unpadded path batches each run)
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


def naive_attention(
    q, k, v, lengths, *, causal=False, window=None, alibi=None, scale=None, softcap=None, key_lengths=None
):
    """Float64 reference: one softmax per sequence and head, written straight from the definitions.
    key_lengths: only the first key_lengths[b] tokens of sequence b are keys; a row with no key is 0."""
    heads, group = q.shape[1], q.shape[1] // k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.zeros(q.shape, dtype=torch.float64)
    start = 0
    for b, n in enumerate(lengths):
        i = torch.arange(n)[:, None]
        j = torch.arange(n)[None, :]
        allowed = torch.ones(n, n, dtype=torch.bool)
        if key_lengths is not None:
            allowed &= j < key_lengths[b]
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
            p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1).nan_to_num(0.0)
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


def run_case(backend, shape, feats, dtype=torch.float32, device="cpu", key_lengths=None):
    """(backend output, float64 oracle on CPU) for one shape and feature set (and key prefix lengths)."""
    lengths, heads, kv_heads, dim = shape
    q, k, v, cu, slopes = make_inputs(lengths, heads, kv_heads, dim, dtype, device)
    kwargs = {key: val for key, val in feats.items() if key != "alibi"}
    alibi = slopes if feats.get("alibi") else None
    keys = None if key_lengths is None else torch.tensor(key_lengths, dtype=torch.int32, device=device)
    out = attention(q, k, v, cu, max(lengths), alibi_slopes=alibi, key_lengths=keys, backend=backend, **kwargs)
    ref = naive_attention(
        q.cpu(),
        k.cpu(),
        v.cpu(),
        lengths,
        alibi=None if alibi is None else slopes.cpu(),
        key_lengths=key_lengths,
        **kwargs,
    )
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


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
@pytest.mark.parametrize("lengths", [(), (0, 0)], ids=["no-sequence", "empty-sequences"])
@pytest.mark.parametrize("feats", [{}, {"window": (2, 2)}, {"softcap": 1.0, "alibi": True}])
def test_no_tokens(backend, lengths, feats):
    q, k, v, cu, slopes = make_inputs(lengths, 4, 2, 8)
    kwargs = {key: val for key, val in feats.items() if key != "alibi"}
    out = attention(q, k, v, cu, 0, alibi_slopes=slopes if feats.get("alibi") else None, backend=backend, **kwargs)
    assert out.shape == (0, 4, 8) and out.dtype == torch.float32


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
    assert requested_features(key_lengths=torch.ones(2, dtype=torch.int32)) == {"key_prefix"}


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


# ---- key prefix: only the first key_lengths[b] tokens of each sequence are keys ---------------

# (shape, key_lengths): GQA ragged; MQA with most queries past the prefix; prefix = whole sequence; an
# empty sequence (key length 0)
KEY_SHAPES = [
    (((5, 1, 17, 3), 4, 2, 8), (2, 1, 6, 3)),
    (((23,), 4, 1, 16), (4,)),
    (((1, 1, 9, 1), 4, 4, 8), (1, 1, 9, 1)),
    (((3, 0, 6), 4, 2, 16), (1, 0, 6)),
]
KEY_FEATURES = {
    name: FEATURES[name]
    for name in ("plain", "causal", "window", "window_left", "alibi", "softcap", "softcap_alibi_window_scale")
} | {
    "window_past_prefix": {"window": (2, 1)},  # queries 4+ past a 1-token prefix see no key: their rows are 0
    "everything": FEATURES["everything"],
}


def _key_case_id(case):
    backend, ((lengths, heads, kv_heads, dim), keys), feats = case
    name = next(key for key, val in KEY_FEATURES.items() if val is feats)
    return f"{backend}-{name}-L{'-'.join(map(str, lengths))}_K{'-'.join(map(str, keys))}_H{heads}kv{kv_heads}"


# sdpa: every feature set on every shape. flex (a dynamo retrace, ~1 s, per case on the CPU): the prefix alone,
# with a window past it (keyless rows), with every other feature; and with an empty sequence
KEY_CASES = [("sdpa", case, feats) for case in KEY_SHAPES for feats in KEY_FEATURES.values()]
KEY_CASES += [("flex", KEY_SHAPES[0], KEY_FEATURES[name]) for name in ("plain", "window_past_prefix", "everything")]
KEY_CASES += [("flex", KEY_SHAPES[3], KEY_FEATURES["everything"])]


@pytest.mark.parametrize("case", KEY_CASES, ids=[_key_case_id(case) for case in KEY_CASES])
def test_key_prefix_matches_naive_fp32(case):
    backend, (shape, keys), feats = case
    out, ref = run_case(backend, shape, feats, key_lengths=keys)
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 1e-5


def test_key_prefix_changes_every_row_it_should():
    """Sanity of the oracle itself: the prefix changes the rows of a sequence with fewer keys than tokens,
    and leaves the sequence whose prefix is all of it alone."""
    shape, keys = KEY_SHAPES[0]
    out, _ = run_case("sdpa", shape, {}, key_lengths=keys)
    full, _ = run_case("sdpa", shape, {})
    differs = (out - full).abs().amax(dim=(1, 2)) > 1e-3
    assert differs[:5].all() and differs[6:23].all() and not differs[5] and not differs[23:].any()


def test_key_prefix_keyless_rows_are_zero_with_finite_grads():
    lengths, keys = (1, 7, 2), torch.tensor([1, 2, 1], dtype=torch.int32)
    q, k, v, cu, slopes = make_inputs(lengths, 4, 2, 8)
    for x in (q, k, v):
        x.requires_grad_(True)
    for extra in ({}, {"softcap": 1.0, "alibi_slopes": slopes}):
        out = attention(q, k, v, cu, 7, window=(1, 0), key_lengths=keys, **extra)
        assert out[4:8].abs().max() == 0 and out[1:4].abs().min() > 0  # tokens 3..6 of sequence 1 see no key
        out.sum().backward()
        assert all(torch.isfinite(x.grad).all() for x in (q, k, v))


def dense_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale, softcap=0.0):
    """Stand-in for a varlen kernel without masks or bias, written from its contract: sequence b's queries
    q[cu_q[b]:cu_q[b+1]] attend to all of k/v[cu_k[b]:cu_k[b+1]] (GQA by head groups). Checks the maxima."""
    lq, lk = cu_q.diff().tolist(), cu_k.diff().tolist()
    assert (max_q, max_k) == (max(lq), max(lk))
    assert cu_k.dtype == torch.int32 and k.shape[0] == cu_k[-1]
    out, group = torch.empty_like(q), q.shape[1] // k.shape[1]
    for b in range(len(lq)):
        qs = q[cu_q[b] : cu_q[b + 1]].double()
        ks, vs = (x[cu_k[b] : cu_k[b + 1]].double().repeat_interleave(group, 1) for x in (k, v))
        s = torch.einsum("qhd,khd->hqk", qs, ks) * scale
        if softcap:
            s = softcap * torch.tanh(s / softcap)
        out[cu_q[b] : cu_q[b + 1]] = torch.einsum("hqk,khd->qhd", s.softmax(-1), vs).to(q.dtype)
    return out


def fake_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size, enable_gqa=False):
    assert window_size == (-1, -1) and enable_gqa == (k.shape[1] != q.shape[1])
    return dense_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)


def fake_varlen_before_gqa_flag(q, k, v, cu_q, cu_k, max_q, max_k, *, scale, window_size):
    """torch 2.11's varlen_attn: no enable_gqa, grouped K/V heads passed through to the flash kernel."""
    return dense_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale)


def fake_flash(q, k, v, cu_q, cu_k, max_q, max_k, *, softmax_scale, causal, window_size, softcap, alibi_slopes):
    assert not causal and window_size == (-1, -1) and alibi_slopes is None
    return dense_varlen(q, k, v, cu_q, cu_k, max_q, max_k, softmax_scale, softcap)


@pytest.mark.parametrize("backend, gqa", [("varlen", True), ("varlen", False), ("flash", True)])
@pytest.mark.parametrize("case", KEY_SHAPES, ids=[f"K{'-'.join(map(str, c[1]))}" for c in KEY_SHAPES])
def test_key_prefix_compact_stream_for_varlen_kernels(monkeypatch, backend, gqa, case):
    """The varlen/flash glue on the CPU: a kernel written from the varlen contract gets the compact K/V
    stream of the key prefixes with its own cu_seqlens_k and max_seqlen_k, and the result is exact."""
    import dataclasses

    cpu_ok = dataclasses.replace(attn_mod._SPECS[backend], cuda_only=False, half_only=False)
    monkeypatch.setitem(attn_mod._SPECS, backend, cpu_ok)
    kernel = fake_varlen if gqa else fake_varlen_before_gqa_flag
    monkeypatch.setattr(attn_mod, "_varlen_api", lambda: (kernel, gqa))
    monkeypatch.setattr(attn_mod, "_flash_varlen_func", lambda: fake_flash)
    shape, keys = case
    feats = {"softcap": 0.8, "scale": 0.4} if backend == "flash" else {"scale": 0.4}
    out, ref = run_case(backend, shape, feats, key_lengths=keys)
    assert (out.double() - ref).abs().max().item() <= 1e-5


@pytest.mark.parametrize("gqa", [True, False], ids=["enable_gqa", "torch-2.11"])
def test_varlen_never_repeats_kv_heads(monkeypatch, gqa):
    """GQA is the flash kernel's: K/V reach it with their own heads (repeating them cost two copies per layer)."""
    import dataclasses

    kernel, heads = fake_varlen if gqa else fake_varlen_before_gqa_flag, []
    monkeypatch.setitem(
        attn_mod._SPECS, "varlen", dataclasses.replace(attn_mod._SPECS["varlen"], cuda_only=False, half_only=False)
    )
    monkeypatch.setattr(
        attn_mod,
        "_varlen_api",
        lambda: (lambda q, k, *a, **kw: heads.append(k.shape[1]) or kernel(q, k, *a, **kw), gqa),
    )
    out, ref = run_case("varlen", ((5, 1, 17, 3), 4, 2, 8), {"scale": 0.4})
    assert heads == [2] and (out.double() - ref).abs().max().item() <= 1e-5


def test_key_stream_is_built_once_per_forward():
    _, _, _, cu, _ = make_inputs((5, 3, 4), 2, 2, 8)
    keys = torch.tensor([2, 3, 1], dtype=torch.int32)
    first = attn_mod._key_stream(cu, keys)
    index, cu_k, max_k = first
    assert index.tolist() == [0, 1, 5, 6, 7, 8] and cu_k.tolist() == [0, 2, 5, 6] and max_k == 3
    assert attn_mod._key_stream(cu, keys) is first  # the next layer reuses it
    assert attn_mod._key_stream(cu, keys.clone()) is not first  # a new batch rebuilds it
    index, cu_k, max_k = attn_mod._key_stream(torch.zeros(1, dtype=torch.int32), torch.zeros(0, dtype=torch.int32))
    assert (index.numel(), cu_k.tolist(), max_k) == (0, [0], 0)  # an empty batch


def test_flex_block_mask_keys_on_key_lengths(monkeypatch):
    built = []
    real = attn_mod.create_block_mask
    monkeypatch.setattr(attn_mod, "create_block_mask", lambda *a, **kw: built.append(1) or real(*a, **kw))
    q, k, v, cu, _ = make_inputs((5, 3), 2, 2, 8)
    keys = torch.tensor([2, 3], dtype=torch.int32)
    attention(q, k, v, cu, 5, backend="flex")
    prefix = attention(q, k, v, cu, 5, key_lengths=keys, backend="flex")
    assert len(built) == 2
    torch.testing.assert_close(attention(q, k, v, cu, 5, key_lengths=keys, backend="flex"), prefix)
    assert len(built) == 2
    keys[0] = 5  # modified in place: a new mask, and the whole first sequence as keys again
    torch.testing.assert_close(
        attention(q, k, v, cu, 5, key_lengths=keys, backend="flex")[:5], attention(q, k, v, cu, 5)[:5]
    )
    assert len(built) == 3


def test_auto_preference_with_key_prefix(monkeypatch):
    monkeypatch.setattr(attn_mod, "_flash_varlen_func", lambda: object())
    monkeypatch.setattr(attn_mod, "_varlen_api", lambda: (object(), True))
    assert resolve_backend("cuda", torch.bfloat16, {"key_prefix", "softcap"}) == "flash"
    assert resolve_backend("cuda", torch.bfloat16, {"key_prefix", "window"}) == "flex"
    monkeypatch.setattr(attn_mod, "_flash_varlen_func", lambda: None)
    assert resolve_backend("cuda", torch.bfloat16, {"key_prefix"}) == "varlen"
    assert resolve_backend("cuda", torch.bfloat16, {"key_prefix", "causal"}) == "flex"
    assert resolve_backend("cpu", torch.float32, {"key_prefix"}) == "sdpa"
    assert available_backends("cpu", torch.float32, {"key_prefix", "alibi"}) == ["flex", "sdpa"]


@pytest.mark.parametrize(
    "backend, feature",
    [("flash", "causal"), ("flash", "window"), ("flash", "alibi"), ("varlen", "causal"), ("varlen", "window")],
)
def test_key_prefix_refuses_bottom_right_combinations(monkeypatch, backend, feature):
    monkeypatch.setattr(attn_mod, "_flash_varlen_func", lambda: object())
    monkeypatch.setattr(attn_mod, "_varlen_api", lambda: (object(), True))
    assert resolve_backend("cuda", torch.bfloat16, {"key_prefix"}, backend=backend) == backend
    assert resolve_backend("cuda", torch.bfloat16, {feature}, backend=backend) == backend
    with pytest.raises(ValueError, match=f"cannot combine key_prefix with {feature} .*bottom-right") as err:
        resolve_backend("cuda", torch.bfloat16, {"key_prefix", feature}, backend=backend)
    assert str(err.value).endswith("Backends that can: flex, sdpa")


@pytest.mark.parametrize(
    "keys",
    [
        torch.tensor([1, 2]),  # int64
        torch.tensor([1], dtype=torch.int32),  # one per sequence
        torch.tensor([[1, 2]], dtype=torch.int32),
    ],
)
def test_bad_key_lengths_raise(keys):
    q, k, v, cu, _ = make_inputs((3, 2), 2, 2, 8)
    with pytest.raises(ValueError, match=r"key_lengths must be int32 \[B=2\]"):
        attention(q, k, v, cu, 3, key_lengths=keys)


KEY_GPU_SHAPES = [
    (((5, 1, 130, 37), 4, 2, 64), (3, 1, 32, 37)),
    (((300,), 8, 1, 128), (32,)),
    (((1, 64, 257), 4, 4, 64), (1, 32, 40)),
]
KEY_GPU_FEATURES = {name: FEATURES[name] for name in ("plain", "window", "alibi", "softcap", "scale", "everything")}


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("backend", ["flash", "varlen", "flex"])
@pytest.mark.parametrize("case", KEY_GPU_SHAPES, ids=lambda c: f"B{len(c[1])}_H{c[0][1]}kv{c[0][2]}d{c[0][3]}")
@pytest.mark.parametrize("feats", KEY_GPU_FEATURES.values(), ids=KEY_GPU_FEATURES.keys())
def test_cuda_key_prefix_matches_sdpa_bf16(backend, case, feats):
    shape, keys = case
    features = requested_features(
        causal=feats.get("causal", False),
        window=feats.get("window"),
        alibi_slopes=torch.ones(1) if feats.get("alibi") else None,
        softcap=feats.get("softcap"),
        key_lengths=torch.ones(1),
    )
    if backend not in available_backends("cuda", torch.bfloat16, features):
        pytest.skip(
            f"{backend} cannot run {sorted(features)} here: flash-attn not installed, or a combination it refuses"
        )
    out, ref = run_case(backend, shape, feats, dtype=torch.bfloat16, device="cuda", key_lengths=keys)
    base, _ = run_case("sdpa", shape, feats, dtype=torch.bfloat16, device="cuda", key_lengths=keys)
    assert out.dtype == torch.bfloat16 and out.shape == base.shape
    torch.testing.assert_close(out.float(), base.float(), atol=2e-2, rtol=2e-2)
    torch.testing.assert_close(out.double().cpu(), ref, atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_per_forward_masks_are_freed_with_the_batch(backend):
    """The masks every layer of a forward shares (sdpa: B * S * S per window; a key prefix keeps the CPU on the
    padded path) go when the batch's cu_seqlens goes, not at the next forward."""
    q, k, v, cu, _ = make_inputs((5, 3), 2, 2, 8)
    keys = torch.tensor([4, 3], dtype=torch.int32)
    with torch.inference_mode():
        cu = cu.clone()
        for window in ((1, 1), (2, -1)):
            attention(q, k, v, cu, 5, window=window, key_lengths=keys, backend=backend)
    slots = [slot for slot, hit in attn_mod._PER_BATCH.items() if hit[1][0][0]() is cu]
    assert len(slots) == 2  # one per window
    del cu
    gc.collect()
    assert not set(slots) & set(attn_mod._PER_BATCH)


# ---- rows: only some tokens are queries (the last layer of a model whose pooler reads single tokens) ----------

# per shape: the query rows, grouped by sequence (several in one sequence, none in others, a repeated one)
ROW_CHOICES = {
    SHAPES[0][0]: [0, 4, 5, 6, 6, 22, 24],
    SHAPES[1][0]: [0, 7, 22],
    SHAPES[2][0]: [1, 10, 2, 11],
    SHAPES[3][0]: [2, 3, 8],
    SHAPES[4][0]: [0, 5, 13, 20, 25],
}


@pytest.mark.parametrize("keys", [False, True], ids=["all-keys", "key-prefix"])
@pytest.mark.parametrize("feats", FEATURES.values(), ids=FEATURES)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"L{'-'.join(map(str, s[0]))}_H{s[1]}kv{s[2]}" for s in SHAPES])
def test_rows_match_naive_fp32(shape, feats, keys):
    lengths, heads, kv_heads, dim = shape
    q, k, v, cu, slopes = make_inputs(lengths, heads, kv_heads, dim)
    index = torch.tensor(ROW_CHOICES[lengths])
    seq = torch.searchsorted(cu[1:].long(), index, right=True)
    rows = TokenRows(index, seq, int(torch.bincount(seq).max()))
    key_lengths = [max(1, n // 3) if n else 0 for n in lengths] if keys else None
    kwargs = {key: val for key, val in feats.items() if key != "alibi"}
    alibi = slopes if feats.get("alibi") else None
    keys_t = None if key_lengths is None else torch.tensor(key_lengths, dtype=torch.int32)
    out = attention(q[index], k, v, cu, max(lengths), alibi_slopes=alibi, key_lengths=keys_t, rows=rows, **kwargs)
    ref = naive_attention(q, k, v, lengths, alibi=alibi, key_lengths=key_lengths, **kwargs)[index]
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert (out.double() - ref).abs().max().item() <= 1e-5


def test_rows_take_the_dense_path_whatever_the_backend():
    """A forced backend still checks the call's features, then the rows run on the dense path (flex's block mask
    is square)."""
    q, k, v, cu, slopes = make_inputs((5, 3), 4, 2, 8)
    rows = TokenRows.ends(cu, ["first", "last"])
    out = attention(q[rows.index], k, v, cu, 5, causal=True, backend="flex", rows=rows)
    ref = naive_attention(q, k, v, (5, 3), causal=True)[rows.index]
    assert (out.double() - ref).abs().max().item() <= 1e-5
    with pytest.raises(ValueError, match="varlen"):
        attention(q[rows.index], k, v, cu, 5, backend="varlen", rows=rows)
    with pytest.raises(ValueError, match=r"q \[R=4, H, d\]"):
        attention(q, k, v, cu, 5, rows=rows)


@pytest.mark.parametrize("feats", FEATURES.values(), ids=FEATURES)
def test_cpu_sdpa_without_a_key_prefix_builds_no_padded_layout(feats):
    """On the CPU, calls without a key prefix run each run of equal-length sequences unpadded: no padding index or
    batch-wide mask is built (a key prefix still builds them, as the test above shows)."""
    lengths = (4, 4, 2, 0, 5)
    q, k, v, cu, slopes = make_inputs(lengths, 4, 2, 8)
    slopes = slopes if feats.get("alibi") else None
    options = {key: val for key, val in feats.items() if key != "alibi"}
    with torch.inference_mode():
        cu = cu.clone()
        out = attention(q, k, v, cu, 5, alibi_slopes=slopes, backend="sdpa", **options)
        assert not [slot for slot, hit in attn_mod._PER_BATCH.items() if hit[1][0][0]() is cu]
    ref = naive_attention(q, k, v, lengths, alibi=slopes, **options)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("feats", FEATURES.values(), ids=FEATURES)
def test_cpu_bfloat16_results_do_not_depend_on_the_batch(feats):
    """A sequence's bfloat16 output is the same alone and packed with a longer one (the padded path rounded
    differently as the batch's longest length changed)."""
    q, k, v, cu, slopes = make_inputs((3, 29), 4, 2, 8, dtype=torch.bfloat16)
    slopes = slopes if feats.get("alibi") else None
    options = {key: val for key, val in feats.items() if key != "alibi"}
    together = attention(q, k, v, cu, 29, alibi_slopes=slopes, backend="sdpa", **options)[:3]
    alone = attention(q[:3], k[:3], v[:3], cu[:2], 3, alibi_slopes=slopes, backend="sdpa", **options)
    torch.testing.assert_close(together, alone, atol=0, rtol=0)

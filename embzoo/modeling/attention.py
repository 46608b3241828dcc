"""Packed (unpadded) self-attention with one signature over several backends (DESIGN §4).

`attention(q, k, v, cu_seqlens, max_seqlen, ...)` takes q [T, H, d], k/v [T, Hkv, d] (H % Hkv == 0)
and int32 cu_seqlens [B+1]; sequence b owns tokens cu_seqlens[b]:cu_seqlens[b+1]. Backends, in auto
preference order on CUDA (fp32 skips flash/varlen; the CPU gets "sdpa"):

    flash   flash_attn.flash_attn_varlen_func (CUDA, fp16/bf16): causal, window, alibi, softcap
    varlen  torch.nn.attention.varlen.varlen_attn (CUDA, fp16/bf16, torch>=2.11): causal, window
    flex    FlexAttention with a document block mask (CUDA compiled, CPU eager): every feature
    sdpa    padded F.scaled_dot_product_attention reference (any device): every feature

Semantics follow flash-attn: window (left, right) lets query i see keys i-left..i+right (-1 =
unbounded), ALiBi adds -slope_h * |i - j|, softcap c maps the scaled score s to c * tanh(s / c)
before the bias and the mask. Forcing a backend (argument, else env EMBZOO_ATTENTION) that cannot
honour the call raises ValueError; no feature is ever dropped silently.
"""

from __future__ import annotations

import functools
import inspect
import math
import os
import warnings
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from embzoo import kernels

__all__ = [
    "BACKENDS",
    "ENV_VAR",
    "FEATURES",
    "attention",
    "available_backends",
    "requested_features",
    "resolve_backend",
]

BACKENDS = ("flash", "varlen", "flex", "sdpa")
FEATURES = ("causal", "window", "alibi", "softcap")
ENV_VAR = "EMBZOO_ATTENTION"
_HALF = (torch.float16, torch.bfloat16)
_FLEX_BLOCK = 128

Window = tuple[int, int]


@dataclass(frozen=True)
class _Spec:
    """What a backend can do: supported features, CUDA-only, fp16/bf16-only."""

    features: frozenset[str]
    cuda_only: bool
    half_only: bool


_SPECS = {
    "flash": _Spec(frozenset(FEATURES), cuda_only=True, half_only=True),
    "varlen": _Spec(frozenset({"causal", "window"}), cuda_only=True, half_only=True),
    "flex": _Spec(frozenset(FEATURES), cuda_only=False, half_only=False),
    "sdpa": _Spec(frozenset(FEATURES), cuda_only=False, half_only=False),
}


@functools.cache
def _flash_varlen_func() -> Callable | None:
    """flash_attn.flash_attn_varlen_func, or None when flash-attn is not importable."""
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


@functools.cache
def _varlen_api() -> tuple[Callable, bool] | None:
    """(varlen_attn, accepts enable_gqa), or None when torch lacks a windowed varlen_attn (<2.11)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" not in params:
        return None
    return varlen_attn, "enable_gqa" in params


@functools.cache
def _compiled_flex() -> tuple[Callable, Callable]:
    """(flex_attention, create_block_mask) compiled once for CUDA; shapes become dynamic on recompile."""
    return torch.compile(flex_attention), torch.compile(create_block_mask)


def requested_features(
    *,
    causal: bool = False,
    window: Window | None = None,
    alibi_slopes: torch.Tensor | None = None,
    softcap: float | None = None,
) -> frozenset[str]:
    """Names (from FEATURES) of the optional features one attention call asks for."""
    wanted = {
        "causal": causal,
        "window": window is not None and tuple(window) != (-1, -1),
        "alibi": alibi_slopes is not None,
        "softcap": bool(softcap),
    }
    return frozenset(name for name, on in wanted.items() if on)


def _unmet(name: str, device: torch.device, dtype: torch.dtype, features: Iterable[str]) -> list[str]:
    """Reasons why backend `name` cannot run a call on device/dtype with these features ([] = it can)."""
    spec = _SPECS[name]
    reasons = []
    if spec.cuda_only and device.type != "cuda":
        reasons.append(f"needs a CUDA device (got {device.type})")
    if spec.half_only and dtype not in _HALF:
        reasons.append(f"needs float16 or bfloat16 (got {dtype})")
    missing = sorted(set(features) - spec.features)
    if missing:
        reasons.append(f"does not support {', '.join(missing)}")
    if device.type == "cuda" and name == "flash" and _flash_varlen_func() is None:
        reasons.append("flash_attn is not installed")
    if device.type == "cuda" and name == "varlen" and _varlen_api() is None:
        reasons.append(f"needs torch>=2.11 for varlen_attn with window_size (have {torch.__version__})")
    return reasons


def available_backends(device: torch.device | str, dtype: torch.dtype, features: Iterable[str] = ()) -> list[str]:
    """Backends able to run a call on device/dtype with these features, in auto preference order."""
    device, features = torch.device(device), frozenset(features)
    return [name for name in BACKENDS if not _unmet(name, device, dtype, features)]


def resolve_backend(
    device: torch.device | str, dtype: torch.dtype, features: Iterable[str] = (), backend: str | None = None
) -> str:
    """The backend a call will use: `backend`, else env EMBZOO_ATTENTION, else auto. Raises ValueError."""
    device, features = torch.device(device), frozenset(features)
    name = backend or os.environ.get(ENV_VAR) or None
    can = available_backends(device, dtype, features)
    if name is None:
        return can[0] if device.type == "cuda" else "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
    reasons = _unmet(name, device, dtype, features)
    if reasons:
        raise ValueError(
            f"attention backend {name!r} cannot run this call: {'; '.join(reasons)}. "
            f"Backends that can: {', '.join(can)}"
        )
    return name


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    *,
    causal: bool = False,
    window: Window | None = None,
    alibi_slopes: torch.Tensor | None = None,
    scale: float | None = None,
    softcap: float | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Attention within each packed sequence. q [T, H, d], k/v [T, Hkv, d] -> [T, H, d] in q.dtype.

    cu_seqlens int32 [B+1] on q's device; alibi_slopes float32 [H]; scale None = 1/sqrt(d);
    softcap None or 0 = off.
    """
    _check_inputs(q, k, v, window, alibi_slopes, softcap)
    features = requested_features(causal=causal, window=window, alibi_slopes=alibi_slopes, softcap=softcap)
    name = resolve_backend(q.device, q.dtype, features, backend)
    options = _Options(
        causal=causal,
        window=_effective_window(causal, window),
        alibi_slopes=alibi_slopes,
        scale=q.shape[-1] ** -0.5 if scale is None else scale,
        softcap=softcap or None,
    )
    return _IMPLS[name](q, k, v, cu_seqlens, max_seqlen, options)


def _check_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    window: Window | None,
    alibi_slopes: torch.Tensor | None,
    softcap: float | None,
) -> None:
    """Shape and argument checks shared by every backend; raises ValueError."""
    if q.dim() != 3 or k.shape != v.shape or k.dim() != 3 or k.shape[0] != q.shape[0]:
        raise ValueError(f"expected q [T, H, d], k/v [T, Hkv, d]; got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.shape[-1] != k.shape[-1] or q.shape[1] % k.shape[1]:
        raise ValueError(f"k/v heads must divide q heads and share d; got {tuple(q.shape)}, {tuple(k.shape)}")
    if window is not None and (len(window) != 2 or min(window) < -1):
        raise ValueError(f"window must be (left, right) with entries >= -1; got {window}")
    if alibi_slopes is not None and alibi_slopes.shape != (q.shape[1],):
        raise ValueError(f"alibi_slopes must be [H={q.shape[1]}]; got {tuple(alibi_slopes.shape)}")
    if softcap is not None and softcap < 0:
        raise ValueError(f"softcap must be >= 0 (0 or None = off); got {softcap}")


@dataclass(frozen=True)
class _Options:
    """One call's options as every backend receives them: scale resolved, causality folded into
    window's right bound (0), softcap None when off."""

    causal: bool
    window: Window
    alibi_slopes: torch.Tensor | None
    scale: float
    softcap: float | None


def _effective_window(causal: bool, window: Window | None) -> Window:
    """(left, right) bounds with causality folded in (right = 0); (-1, -1) = unbounded."""
    left, right = (-1, -1) if window is None else (int(window[0]), int(window[1]))
    return (left, 0) if causal else (left, right)


def _repeat_kv(x: torch.Tensor, heads: int, dim: int) -> torch.Tensor:
    """Repeat the KV heads on `dim` so each of the `heads` query heads has its own (GQA)."""
    return x.repeat_interleave(heads // x.shape[dim], dim=dim)


# ---- sdpa: padded reference ------------------------------------------------------------------


def _allowed(lengths: torch.Tensor, length: int, window: Window) -> torch.Tensor:
    """Bool [B, S, S]: query i may see key j. Padding query rows see everything (no empty rows)."""
    idx = torch.arange(length, device=lengths.device)
    i, j = idx[:, None], idx[None, :]
    ok = (j < lengths[:, None, None]).expand(-1, length, -1)
    left, right = window
    if left >= 0:
        ok = ok & (j >= i - left)
    if right >= 0:
        ok = ok & (j <= i + right)
    return ok | (i >= lengths[:, None, None])


def _alibi_bias(slopes: torch.Tensor, length: int) -> torch.Tensor:
    """Float32 [H, S, S] bias -slope_h * |i - j|."""
    idx = torch.arange(length, device=slopes.device)
    return -slopes.float()[:, None, None] * (idx[:, None] - idx[None, :]).abs()


def _sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    o: _Options,
) -> torch.Tensor:
    """Pad to [B, H, S, d], attend with a dense mask (fp32 when ALiBi/softcap), unpad."""
    heads = q.shape[1]
    qp, kp, vp = (kernels.pad(x, cu_seqlens, max_seqlen).transpose(1, 2) for x in (q, k, v))
    ok = _allowed(cu_seqlens[1:] - cu_seqlens[:-1], max_seqlen, o.window)[:, None]
    bias = None if o.alibi_slopes is None else _alibi_bias(o.alibi_slopes, max_seqlen)
    if o.softcap is not None:
        out = _explicit(qp, _repeat_kv(kp, heads, 1), _repeat_kv(vp, heads, 1), ok, bias, o.scale, o.softcap)
    elif bias is not None:
        mask = bias.masked_fill(~ok, float("-inf"))
        out = F.scaled_dot_product_attention(
            qp.float(), kp.float(), vp.float(), attn_mask=mask, scale=o.scale, enable_gqa=k.shape[1] != heads
        )
    else:
        out = F.scaled_dot_product_attention(qp, kp, vp, attn_mask=ok, scale=o.scale, enable_gqa=k.shape[1] != heads)
    return kernels.unpad(out.transpose(1, 2), cu_seqlens).to(q.dtype)


def _explicit(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ok: torch.Tensor,
    bias: torch.Tensor | None,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """Softcapped attention in fp32 on [B, H, S, d] with bool mask ok [B, 1, S, S] -> fp32 [B, H, S, d]."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * scale
    scores = softcap * torch.tanh(scores / softcap)
    if bias is not None:
        scores = scores + bias
    probs = scores.masked_fill(~ok, float("-inf")).softmax(dim=-1)
    return torch.matmul(probs, v.float())


# ---- varlen / flash: packed kernels ----------------------------------------------------------


def _varlen(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    o: _Options,
) -> torch.Tensor:
    """torch varlen_attn; causal is window_size (-1, 0), GQA via enable_gqa or repeated K/V heads."""
    varlen_attn, has_gqa = _varlen_api()
    kwargs = {}
    if k.shape[1] != q.shape[1]:
        if has_gqa:
            kwargs["enable_gqa"] = True
        else:
            k, v = _repeat_kv(k, q.shape[1], 1), _repeat_kv(v, q.shape[1], 1)
    return varlen_attn(
        q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, scale=o.scale, window_size=o.window, **kwargs
    )


def _flash(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    o: _Options,
) -> torch.Tensor:
    """flash_attn_varlen_func with every feature passed through (GQA is native)."""
    return _flash_varlen_func()(
        q,
        k,
        v,
        cu_seqlens,
        cu_seqlens,
        max_seqlen,
        max_seqlen,
        softmax_scale=o.scale,
        causal=o.causal,
        window_size=o.window,
        softcap=o.softcap or 0.0,
        alibi_slopes=o.alibi_slopes,
    )


# ---- flex: one packed stream with a document mask --------------------------------------------


def _mask_mod(doc: torch.Tensor, window: Window) -> Callable:
    """mask_mod: same document (doc int [P]) and inside the (left, right) window."""
    left, right = window

    def mask_mod(b, h, q_idx, kv_idx):
        keep = doc[q_idx] == doc[kv_idx]
        if left >= 0:
            keep = keep & (kv_idx >= q_idx - left)
        if right >= 0:
            keep = keep & (kv_idx <= q_idx + right)
        return keep

    return mask_mod


def _score_mod(alibi_slopes: torch.Tensor | None, softcap: float | None) -> Callable | None:
    """score_mod: softcap then ALiBi on the scaled score; None when neither is asked for."""
    if alibi_slopes is None and softcap is None:
        return None
    slopes = None if alibi_slopes is None else alibi_slopes.float()

    def score_mod(score, b, h, q_idx, kv_idx):
        if softcap is not None:
            score = softcap * torch.tanh(score / softcap)
        if slopes is not None:
            score = score - slopes[h] * (q_idx - kv_idx).abs()
        return score

    return score_mod


_MASKS: dict[Window, tuple[weakref.ref, int, int, BlockMask]] = {}


def _block_mask(make_mask: Callable, cu_seqlens: torch.Tensor, padded: int, window: Window) -> BlockMask:
    """The document (+ window) block mask for this packed batch. Every layer of a forward passes the same
    cu_seqlens tensor, so the mask is built once per forward and window; a different (or modified)
    cu_seqlens tensor rebuilds it. Inference tensors (made under inference_mode) track no version: for them
    the tensor's identity alone is the key."""
    hit = _MASKS.get(window)
    version = None if cu_seqlens.is_inference() else cu_seqlens._version
    if hit and hit[0]() is cu_seqlens and hit[1] == version and hit[2] == padded:
        return hit[3]
    tokens = torch.arange(padded, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    doc = torch.searchsorted(cu_seqlens[1:], tokens, right=True)  # padding tokens form document B
    mask = make_mask(_mask_mod(doc, window), None, None, padded, padded, device=cu_seqlens.device)
    _MASKS[window] = (weakref.ref(cu_seqlens), version, padded, mask)
    return mask


def _flex(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens: torch.Tensor,
    max_seqlen: int,
    o: _Options,
) -> torch.Tensor:
    """FlexAttention over the packed stream as one sequence padded to P (multiple of 128)."""
    total = q.shape[0]
    padded = math.ceil(total / _FLEX_BLOCK) * _FLEX_BLOCK
    qf, kf, vf = (F.pad(x, (0, 0, 0, 0, 0, padded - total)).transpose(0, 1)[None] for x in (q, k, v))
    flex, make_mask = _compiled_flex() if q.is_cuda else (flex_attention, create_block_mask)
    block_mask = _block_mask(make_mask, cu_seqlens, padded, o.window)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        out = flex(
            qf,
            kf,
            vf,
            score_mod=_score_mod(o.alibi_slopes, o.softcap),
            block_mask=block_mask,
            scale=o.scale,
            enable_gqa=k.shape[1] != q.shape[1],
        )
    return out[0, :, :total].transpose(0, 1).contiguous()


_IMPLS = {"flash": _flash, "varlen": _varlen, "flex": _flex, "sdpa": _sdpa}

"""One transformer block on packed [T, D] tensors: fused-QKV self-attention and an MLP.

post-norm (BERT, NomicBert, GTE, jina-v2):  h = norm_attn(h + attn(h));  h = norm_mlp(h + mlp(h))
pre-norm (ModernBERT, Llama, Qwen):         h = h + attn(norm_attn(h));  h = h + mlp(norm_mlp(h))
sandwich (Gemma2/3):  h = h + norm_attn_out(attn(norm_attn(h)));  h = h + norm_mlp_out(mlp(norm_mlp(h)))

Each residual add that feeds a norm of the same block runs fused with it (layers.add_norm: one pass, the norm modules
keep the weights); a pre-norm block's last add feeds the next block's norm_attn and runs on its own.
Given TokenRows, a block returns the states of those rows only: keys and values come from every token, the rest
(queries, attention output, residuals, MLP, norms) runs for the rows alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embzoo import kernels
from embzoo.config import ArchConfig
from embzoo.modeling.attention import attention
from embzoo.modeling.batch import TokenRows
from embzoo.modeling.layers import Linear, add_norm, make_activation, make_norm


@dataclass(frozen=True)
class LayerContext:
    """What a block needs besides its input, shared by every layer of one type in one forward."""

    cu_seqlens: torch.Tensor  # int32 [B+1]
    max_seqlen: int
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin float32 [T, rotary_dim/2]
    window: tuple[int, int] | None = None
    alibi_slopes: torch.Tensor | None = None  # float32 [H]
    backend: str | None = None
    key_lengths: torch.Tensor | None = None  # int32 [B]: leading tokens per sequence that serve as keys


class SelfAttention(nn.Module):
    """qkv weight rows are [H query heads; Hkv key heads; Hkv value heads] (GQA when Hkv < H), each
    head_dim wide; q/k norms (qk_norm) come before rotary. Per-head norms and rotary run fused in
    kernels.head_norm_rotary (q_norm / k_norm only hold its weights). h [T, D] -> [T, D], or [R, D] for the
    queries of `rows` only."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        self.sizes = (cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim)
        self.qkv = Linear(cfg.hidden_size, sum(self.sizes), bias=cfg.qkv_bias)
        self.out = Linear(self.sizes[0], cfg.hidden_size, bias=cfg.out_bias)
        if cfg.qk_norm != "none":
            per_head = cfg.qk_norm == "head"
            self.q_norm = make_norm(cfg, cfg.head_dim if per_head else self.sizes[0])
            self.k_norm = make_norm(cfg, cfg.head_dim if per_head else self.sizes[1])

    def forward(self, h: torch.Tensor, ctx: LayerContext, rows: TokenRows | None = None) -> torch.Tensor:
        cfg, tokens = self.cfg, h.shape[0]
        qkv, (nq, nk, _) = self.qkv(h), self.sizes
        q = qkv[:, :nq] if rows is None else qkv[rows.index, :nq]
        k, v = qkv[:, nq : nq + nk], qkv[:, nq + nk :]
        if cfg.qk_norm == "vector":  # over the whole q (and k) vector, all heads together
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(q.shape[0], cfg.num_heads, cfg.head_dim)
        k = k.view(tokens, cfg.num_kv_heads, cfg.head_dim)
        v = v.view(tokens, cfg.num_kv_heads, cfg.head_dim)
        if cfg.qk_norm == "head" or ctx.rotary is not None:
            # one pass per tensor: strided view in, norm (per head) and rotary in fp32, contiguous out
            q_weight, k_weight = (self.q_norm.weight, self.k_norm.weight) if cfg.qk_norm == "head" else (None, None)
            cos, sin = ctx.rotary or (None, None)
            q_cos, q_sin = (cos, sin) if rows is None or cos is None else (cos[rows.index], sin[rows.index])
            eps, offset = cfg.norm_eps, cfg.norm_weight_offset
            q = kernels.head_norm_rotary(q, q_weight, eps, offset, q_cos, q_sin)
            k = kernels.head_norm_rotary(k, k_weight, eps, offset, cos, sin)
        a = attention(
            q,
            k,
            v,
            ctx.cu_seqlens,
            ctx.max_seqlen,
            causal=cfg.causal,
            window=ctx.window,
            alibi_slopes=ctx.alibi_slopes,
            scale=cfg.attn_scale or None,
            softcap=cfg.attn_softcap or None,
            key_lengths=ctx.key_lengths,
            backend=ctx.backend,
            rows=rows,
        )
        return self.out(a.flatten(1))  # not reshape(R, -1): ambiguous for R = 0


class MLP(nn.Module):
    """down(act(up h)); gated: up yields [gate; up] (2 × intermediate) and down(act(gate) * up), the gating
    fused in kernels.gated_act (fp32 inside, one rounding)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.gated = cfg.mlp_gated
        self.activation = cfg.activation
        width = cfg.intermediate_size * (2 if cfg.mlp_gated else 1)
        self.up = Linear(cfg.hidden_size, width, bias=cfg.mlp_bias and cfg.mlp_up_bias)
        self.act = None if cfg.mlp_gated else make_activation(cfg)
        self.down = Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.down(self.act(self.up(h)))
        return self.down(kernels.gated_act(self.up(h), self.activation))


class Block(nn.Module):
    def __init__(self, cfg: ArchConfig, index: int):
        super().__init__()
        self.pre_norm = cfg.norm_placement != "post"
        self.attn = SelfAttention(cfg)
        first_without_norm = self.pre_norm and index == 0 and not cfg.first_attn_norm
        self.norm_attn = nn.Identity() if first_without_norm else make_norm(cfg)
        self.mlp = MLP(cfg)
        self.norm_mlp = make_norm(cfg)
        self.norm_attn2 = make_norm(cfg) if cfg.attn_second_norm else None
        sandwich = cfg.norm_placement == "sandwich"
        self.norm_attn_out = make_norm(cfg) if sandwich else nn.Identity()
        self.norm_mlp_out = make_norm(cfg) if sandwich else nn.Identity()

    def forward(self, h: torch.Tensor, ctx: LayerContext, rows: TokenRows | None = None) -> torch.Tensor:
        """h [T, D] -> [T, D], or [R, D]: the states of `rows` only."""
        kept = h if rows is None else h[rows.index]
        if self.pre_norm:
            x, h = add_norm(self.norm_mlp, self.norm_attn_out(self.attn(self.norm_attn(h), ctx, rows)), kept)
            return h + self.norm_mlp_out(self.mlp(x))
        a, _ = add_norm(self.norm_attn, self.attn(h, ctx, rows), kept)
        h = a if self.norm_attn2 is None else add_norm(self.norm_attn2, a, kept)[0]
        return add_norm(self.norm_mlp, self.mlp(h), h)[0]

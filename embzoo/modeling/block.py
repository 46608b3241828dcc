"""One transformer block on packed [T, D] tensors: fused-QKV self-attention and an MLP.

post-norm (BERT, NomicBert, GTE, jina-v2):  h = norm_attn(h + attn(h));  h = norm_mlp(h + mlp(h))
pre-norm (ModernBERT):                      h = h + attn(norm_attn(h));  h = h + mlp(norm_mlp(h))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from embzoo import kernels
from embzoo.config import ArchConfig
from embzoo.modeling.attention import attention
from embzoo.modeling.layers import make_activation, make_norm


@dataclass(frozen=True)
class LayerContext:
    """What a block needs besides its input, shared by every layer of one type in one forward."""

    cu_seqlens: torch.Tensor  # int32 [B+1]
    max_seqlen: int
    rotary: tuple[torch.Tensor, torch.Tensor] | None = None  # cos, sin float32 [T, rotary_dim/2]
    window: tuple[int, int] | None = None
    alibi_slopes: torch.Tensor | None = None  # float32 [H]
    backend: str | None = None


class SelfAttention(nn.Module):
    """qkv weight rows are [all Q heads; all K heads; all V heads]; rotary is applied in place to q, k."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        inner = cfg.num_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * inner, bias=cfg.qkv_bias)
        self.out = nn.Linear(inner, cfg.hidden_size, bias=cfg.out_bias)
        if cfg.qk_norm:
            self.q_norm = make_norm(cfg, inner)
            self.k_norm = make_norm(cfg, inner)

    def forward(self, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        qkv = self.qkv(h)
        if self.cfg.qk_norm:  # over the whole q (and k) vector, all heads together, before the head split
            q, k, v = qkv.chunk(3, dim=-1)
            qkv = torch.cat([self.q_norm(q), self.k_norm(k), v], dim=-1)
        qkv = qkv.view(h.shape[0], 3, self.cfg.num_heads, self.cfg.head_dim)
        q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]
        if ctx.rotary is not None:
            kernels.rotary(q, *ctx.rotary)
            kernels.rotary(k, *ctx.rotary)
        a = attention(
            q,
            k,
            v,
            ctx.cu_seqlens,
            ctx.max_seqlen,
            causal=self.cfg.causal,
            window=ctx.window,
            alibi_slopes=ctx.alibi_slopes,
            backend=ctx.backend,
        )
        return self.out(a.reshape(h.shape[0], -1))


class MLP(nn.Module):
    """down(act(up h)); gated: up yields [gate; up] (2 × intermediate) and down(act(gate) * up)."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.gated = cfg.mlp_gated
        width = cfg.intermediate_size * (2 if cfg.mlp_gated else 1)
        self.up = nn.Linear(cfg.hidden_size, width, bias=cfg.mlp_bias and cfg.mlp_up_bias)
        self.act = make_activation(cfg)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.down(self.act(self.up(h)))
        gate, up = self.up(h).chunk(2, dim=-1)
        return self.down(self.act(gate) * up)


class Block(nn.Module):
    def __init__(self, cfg: ArchConfig, index: int):
        super().__init__()
        self.pre_norm = cfg.norm_placement == "pre"
        self.attn = SelfAttention(cfg)
        first_without_norm = self.pre_norm and index == 0 and not cfg.first_attn_norm
        self.norm_attn = nn.Identity() if first_without_norm else make_norm(cfg)
        self.mlp = MLP(cfg)
        self.norm_mlp = make_norm(cfg)
        self.norm_attn2 = make_norm(cfg) if cfg.attn_second_norm else None

    def forward(self, h: torch.Tensor, ctx: LayerContext) -> torch.Tensor:
        if self.pre_norm:
            h = h + self.attn(self.norm_attn(h), ctx)
            return h + self.mlp(self.norm_mlp(h))
        a = self.norm_attn(h + self.attn(h, ctx))
        h = a if self.norm_attn2 is None else self.norm_attn2(h + a)
        return self.norm_mlp(h + self.mlp(h))

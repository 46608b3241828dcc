"""One transformer block on packed [T, D] tensors: fused-QKV self-attention and an MLP.

Post-norm (BERT):  h = norm_attn(h + out(attn(qkv(h))));  h = norm_mlp(h + down(act(up(h))))
"""

from __future__ import annotations

import torch
from torch import nn

from embzoo.config import ArchConfig
from embzoo.modeling.attention import attention
from embzoo.modeling.layers import make_activation, make_norm


class SelfAttention(nn.Module):
    """qkv weight rows are [all Q heads; all K heads; all V heads]."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.cfg = cfg
        inner = cfg.num_heads * cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * inner, bias=cfg.qkv_bias)
        self.out = nn.Linear(inner, cfg.hidden_size, bias=cfg.out_bias)

    def forward(self, h: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, backend: str | None) -> torch.Tensor:
        q, k, v = self.qkv(h).view(h.shape[0], 3, self.cfg.num_heads, self.cfg.head_dim).unbind(1)
        a = attention(q, k, v, cu_seqlens, max_seqlen, causal=self.cfg.causal, backend=backend)
        return self.out(a.reshape(h.shape[0], -1))


class MLP(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.up = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.act = make_activation(cfg)
        self.down = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(h)))


class Block(nn.Module):
    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.attn = SelfAttention(cfg)
        self.norm_attn = make_norm(cfg)
        self.mlp = MLP(cfg)
        self.norm_mlp = make_norm(cfg)

    def forward(
        self, h: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, backend: str | None = None
    ) -> torch.Tensor:
        h = self.norm_attn(h + self.attn(h, cu_seqlens, max_seqlen, backend))
        return self.norm_mlp(h + self.mlp(h))

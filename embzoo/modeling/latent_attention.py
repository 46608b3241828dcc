"""NV-Embed's latent-attention pooler: each token attends to a learned latent array, then a masked mean.

Per token (tokens never see each other, so packing needs no mask):
    h1 = h + out(attend(q = q(norm_attn(h)), k, v = kv(norm_latents(latents))))
    h2 = h1 + down(GELU(gate) · up),  [gate; up] = up(norm_mlp(h1))
then the mean over each sequence, its first prompt_lengths[b] tokens left out unless include_prompt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from embzoo import kernels


class LatentAttentionPooler(nn.Module):
    """Queries are the tokens, keys/values the `num_latents` latents: num_heads heads of head_dim each
    (NV-Embed: 8 × 4096, wider than hidden/heads). LayerNorms (eps 1e-5) with bias; no attention biases;
    the GEGLU feed-forward's `up` rows are [gate; up] and both its projections have biases.

    output_normalize: the checkpoint's recipe L2-normalizes the pooled vector (Embedder applies it).
    """

    name = "latent_attention"

    def __init__(
        self,
        hidden_size: int,
        num_latents: int,
        num_heads: int,
        head_dim: int,
        intermediate_size: int,
        include_prompt: bool = False,
        output_normalize: bool = True,
    ):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.include_prompt = include_prompt
        self.output_normalize = output_normalize
        inner = num_heads * head_dim
        self.latents = nn.Parameter(torch.zeros(num_latents, hidden_size))
        self.norm_attn = nn.LayerNorm(hidden_size)
        self.norm_latents = nn.LayerNorm(hidden_size)
        self.attn = nn.ModuleDict(
            {
                "q": nn.Linear(hidden_size, inner, bias=False),
                "kv": nn.Linear(hidden_size, 2 * inner, bias=False),
                "out": nn.Linear(inner, hidden_size, bias=False),
            }
        )
        self.norm_mlp = nn.LayerNorm(hidden_size)
        self.mlp = nn.ModuleDict(
            {"up": nn.Linear(hidden_size, 2 * intermediate_size), "down": nn.Linear(intermediate_size, hidden_size)}
        )

    def token_rows(self, cu_seqlens: torch.Tensor, prompt_lengths: torch.Tensor | None = None) -> None:
        """None: the pooler reads every token."""
        return None

    def output_dim(self, hidden_size: int) -> int:
        """Width of the pooled vector: the backbone's hidden size."""
        return hidden_size

    def forward(
        self, h: torch.Tensor, cu_seqlens: torch.Tensor, prompt_lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """h [T, D] packed token states, cu_seqlens int32 [B+1], prompt_lengths int32 [B] → float32 [B, D]."""
        tokens, heads, width = h.shape[0], self.num_heads, self.head_dim
        q = self.attn.q(self.norm_attn(h)).view(tokens, heads, width).transpose(0, 1)
        kv = self.attn.kv(self.norm_latents(self.latents)).view(-1, 2, heads, width)
        k, v = kv.permute(1, 2, 0, 3)  # each [heads, latents, width]
        attended = F.scaled_dot_product_attention(q, k, v)  # softmax over the latents
        h = h + self.attn.out(attended.transpose(0, 1).reshape(tokens, heads * width))
        gate, up = self.mlp.up(self.norm_mlp(h)).chunk(2, dim=-1)
        h = h + self.mlp.down(F.gelu(gate) * up)
        return kernels.segment_pool(h, cu_seqlens, "mean", None if self.include_prompt else prompt_lengths)

"""The shared adaptor of AF-CLIP (Sec. 3.1): LayerNorm, then multi-head self-attention.

One adaptor serves every token set (each layer and radius); its output then goes through
CLIP's own ``ln_post`` and projection, so the adapted tokens live in the joint
image-text space. AF-CLIP has no residual (the adaptor re-focuses the features on local
anomalies); miniCLIP's attention adapter adds one (``x + attn(norm(x))``, af_tiny
``Attention_Adapter``). Both authors use 8 heads of 64 whatever the tower's width
(``BasicTransformerBlock`` defaults), with bias-free q/k/v and a biased output projection.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

HEAD_DIM = 64
HEADS = 8


class Adaptor(nn.Module):
    """LayerNorm + self-attention (bias-free q/k/v, linear output back to ``width``)."""

    def __init__(
        self,
        width: int,
        heads: int | None = None,
        head_dim: int = HEAD_DIM,
        residual: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads or HEADS
        self.residual = residual
        self.head_dim = head_dim
        inner = self.heads * head_dim
        self.norm = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, inner, bias=False)
        self.to_k = nn.Linear(width, inner, bias=False)
        self.to_v = nn.Linear(width, inner, bias=False)
        self.to_out = nn.Linear(inner, width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., T, C] -> [..., T, C]; leading dimensions are independent token sets."""
        lead = tokens.shape[:-2]
        length = tokens.shape[-2]
        x = self.norm(tokens.reshape(-1, length, tokens.shape[-1]))

        def split(projected: torch.Tensor) -> torch.Tensor:
            return projected.reshape(x.shape[0], length, self.heads, self.head_dim).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(self.to_q(x)), split(self.to_k(x)), split(self.to_v(x))
        )  # [S, heads, T, d]
        merged = attended.transpose(1, 2).reshape(x.shape[0], length, -1)
        out = self.to_out(merged).reshape(*lead, length, -1)
        return tokens + out if self.residual else out

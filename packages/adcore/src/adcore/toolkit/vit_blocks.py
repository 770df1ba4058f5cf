"""open_clip's residual attention block with its attention through PyTorch's fused kernel.

open_clip's ``ResidualAttentionBlock`` calls ``nn.MultiheadAttention``, whose inference fast
path on the CPU materialises every head's [L, L] attention matrix (``bmm``, ``softmax``,
``bmm`` and the copies between them). :func:`residual_block` does the block's arithmetic -
pre-norm attention, then pre-norm MLP, each with its layer scale - with the same weights,
but attention through ``F.scaled_dot_product_attention``, which on the CPU runs the fused
(flash) kernel and never builds that matrix. Outputs agree with the module's own forward to
float rounding (about 1e-7 relative). At 1,370 tokens (a ViT/14 at 518 px) TinyCLIP's ten
blocks took 1.29 s against 1.97 s (median of 10 alternating pairs, 2 threads, Intel Xeon with
AVX-512 and AMX, load average 7-8: ``benchmarks/profile_clip.py``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def plain_block(block: nn.Module) -> bool:
    """An open_clip ``ResidualAttentionBlock`` on a standard ``nn.MultiheadAttention`` (one
    input projection, no extra key/value biases, no cross-attention norm)."""
    attn = getattr(block, "attn", None)
    return (
        isinstance(attn, nn.MultiheadAttention)
        and attn._qkv_same_embed_dim
        and attn.bias_k is None
        and not attn.add_zero_attn
        and all(hasattr(block, name) for name in ("ln_1", "ln_2", "ls_1", "ls_2", "mlp"))
        and not hasattr(block, "ln_1_kv")
    )


def residual_block(block: Any, x: torch.Tensor, qkv: torch.Tensor | None = None) -> torch.Tensor:
    """A :func:`plain_block` on batch-first tokens [N, L, C] -> [N, L, C], self-attention
    without a mask.

    ``qkv`` [N, L, 3C], when given, stands in for the block's own input projection of
    ``ln_1(x)`` (WinCLIP computes the first block's once per image and gathers it).
    """
    attn = block.attn
    n, length, width = x.shape
    if qkv is None:
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(n, length, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
    out = F.scaled_dot_product_attention(q, k, v)  # [N, H, L, C/H]
    x = x + block.ls_1(attn.out_proj(out.transpose(1, 2).reshape(n, length, width)))
    return x + block.ls_2(block.mlp(block.ln_2(x)))

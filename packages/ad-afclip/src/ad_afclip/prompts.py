"""Learnable state prompts (AF-CLIP, Sec. 3.3).

``length`` learned context vectors precede the fixed texts "without defect." and
"with defect."; no class name, so one pair of prompts describes normal and abnormal states
for every object. The texts pass through CLIP's frozen text tower.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

STATE_TEXTS = ("without defect.", "with defect.")


class TextTower(nn.Module):
    """The frozen text half of an open_clip CLIP, fed embeddings instead of token ids."""

    def __init__(self, clip: nn.Module) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    def forward(self, embeddings: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
        """[P, T, D] token embeddings, [P] end-of-text positions -> [P, E] text features."""
        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), eot]
        if isinstance(self.text_projection, nn.Linear):
            return self.text_projection(pooled)
        return pooled @ self.text_projection


class StatePrompts(nn.Module):
    """Learned context + fixed state texts -> normalised [2, E] features (normal, abnormal)."""

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        length: int = 12,
        texts: tuple[str, ...] = STATE_TEXTS,
    ) -> None:
        super().__init__()
        self.text = TextTower(clip)
        tokens = tokenizer(list(texts))  # [P, context]
        self.context_length = tokens.shape[1]
        self.register_buffer("tokens", tokens, persistent=False)
        width = self.text.token_embedding.weight.shape[1]
        self.context = nn.Parameter(torch.empty(1, length, width))
        nn.init.normal_(self.context, std=0.01)

    def forward(self) -> torch.Tensor:
        """-> [P, E] unit-norm text features."""
        fixed = self.text.token_embedding(self.tokens)  # [P, T, D]
        context = self.context.expand(fixed.shape[0], -1, -1).to(fixed.dtype)
        embeddings = torch.cat([context, fixed], dim=1)[:, : self.context_length]
        eot = (self.tokens.argmax(dim=-1) + self.context.shape[1]).clamp(
            max=self.context_length - 1
        )
        return F.normalize(self.text(embeddings, eot), dim=-1)

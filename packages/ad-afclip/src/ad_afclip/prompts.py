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


# af_tiny main.py ``mvtec_class_names`` | ``visa_class_names``, as released (typo included:
# "a ried snack" is what their fryum prompts say, so it is what their numbers used).
AF_TINY_ALIASES: dict[str, str] = {
    "bottle": "a bottle",
    "cable": "a cable",
    "capsule": "a capsule",
    "carpet": "carpet",
    "grid": "grid",
    "hazelnut": "a hazelnut",
    "leather": "leather",
    "metal_nut": "a metal nut",
    "pill": "a pill",
    "screw": "a screw",
    "tile": "tile",
    "toothbrush": "a toothbrush",
    "transistor": "a transistor",
    "wood": "wood",
    "zipper": "a zipper",
    "candle": "a candle",
    "capsules": "multiple capsules",
    "cashew": "a cashew",
    "chewinggum": "a chewing gum",
    "fryum": "a ried snack",
    "macaroni1": "macaroni pasta",
    "macaroni2": "macaroni pasta",
    "pcb1": "a printed circuit board",
    "pcb2": "a printed circuit board",
    "pcb3": "a printed circuit board",
    "pcb4": "a printed circuit board",
    "pipe_fryum": "a fried snack",
}


def af_tiny_alias(category: str, class_name: str) -> str:
    """The authors' alias of a category; other categories use the data set's class name."""
    return AF_TINY_ALIASES.get(category, class_name)

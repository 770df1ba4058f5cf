"""miniCLIP: the af_tiny model of github suniverse77/miniCLIP (AF-CLIP adapted to TinyCLIP).

Data path, as ``af_tiny/model/clip.py`` computes it (commit e8ffb70):
frozen TinyCLIP ViT at 518 px (bilinear positional embedding, QuickGELU) -> tokens after
blocks 5/7/9/10, before ``ln_post``.
- Class tokens of the last two read blocks -> class-token projector (each) -> unit, summed,
  unit: the image embedding.
- Patch tokens of every block -> Gaussian windows 1/3/5 (sigma 4, zero outside the grid) ->
  residual attention adapter (8 x 64 heads, shared) -> ``ln_post`` -> projection; the windows
  of a block are summed, each block's sum made unit, the blocks summed and made unit.
- Text: "a photo of {alias} without defect." / "... with defect." with the authors' alias
  per category, through the frozen text tower with a residual text adapter mixed in after
  each of the first four blocks (x <- 0.9 x + 0.1 adapter(x)).
- Scores: cosine / 0.07, softmax over the two states; the class token gives the image score,
  the patches the map. There is no few-shot path in af_tiny.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ad_afclip.adaptor import Adaptor
from ad_afclip.aggregation import aggregation_weights, spatial_aggregation
from ad_afclip.model import TEMPERATURE, FrozenVisualTower
from adcore.api import anomaly_map

TEXT_ADAPTER_BLOCKS = 4  # af_tiny encode_text_batch: adapter_layer=4
TEXT_ADAPTER_MIX = 0.1  # af_tiny encode_text_batch: _lambda=0.1
CLASS_TOKEN_LAYERS = 2  # the last two read blocks feed the class-token projector


class ClassTokenProjector(nn.Module):
    """Linear+LN shortcut plus Linear-LN-GELU-Linear-LN (af_tiny ``CLS_Projector``)."""

    def __init__(self, width: int, embed: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(width, embed),
            nn.LayerNorm(embed),
            nn.GELU(),
            nn.Linear(embed, embed),
            nn.LayerNorm(embed),
        )
        self.shortcut = nn.Sequential(nn.Linear(width, embed), nn.LayerNorm(embed))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., C] -> [..., E]."""
        return self.shortcut(tokens) + self.mlp(tokens)


class TextAdapter(nn.Module):
    """Linear-ReLU-Linear-ReLU-Linear then LayerNorm, hidden width/2 (af_tiny ``Text_Adapter``)."""

    def __init__(self, width: int) -> None:
        super().__init__()
        hidden = width // 2
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, width),
        )
        self.ln = nn.LayerNorm(width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., D] -> [..., D]."""
        return self.ln(self.mlp(tokens))


class AdaptedTextTower(nn.Module):
    """The frozen open_clip text tower with the text adapter mixed in after its first blocks."""

    def __init__(
        self,
        clip: nn.Module,
        adapter: TextAdapter,
        blocks: int = TEXT_ADAPTER_BLOCKS,
        mix: float = TEXT_ADAPTER_MIX,
    ) -> None:
        super().__init__()
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.resblocks = clip.transformer.resblocks
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)
        self.adapter = adapter
        self.blocks = blocks
        self.mix = mix

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """[P, T] token ids -> [P, E] unit text features (pooled at each end-of-text token)."""
        x = self.token_embedding(tokens) + self.positional_embedding.to(
            self.token_embedding.weight.dtype
        )  # [P, T, D]
        for index, block in enumerate(self.resblocks):
            x = block(x, attn_mask=self.attn_mask)
            if index < self.blocks:
                x = (1 - self.mix) * x + self.mix * self.adapter(x)
        x = self.ln_final(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        else:
            pooled = pooled @ self.text_projection
        return F.normalize(pooled, dim=-1)


def state_prompts(alias: str) -> tuple[str, str]:
    """The normal and abnormal sentences for one object (af_tiny ``create_prompt``)."""
    return f"a photo of {alias} without defect.", f"a photo of {alias} with defect."


@dataclass
class MiniOutputs:
    """``image_logit`` [B] and ``map_logit`` [B, h, w] are logit(abnormal) - logit(normal);
    ``patch_features`` [B, N, E] are the fused unit patch features the alignment loss uses;
    ``image_logits`` [B, 2] and ``map_logits`` [B, h, w, 2] the (normal, abnormal) logits the
    released training's softmax takes."""

    image_logit: torch.Tensor
    map_logit: torch.Tensor
    patch_features: torch.Tensor
    image_logits: torch.Tensor | None = None
    map_logits: torch.Tensor | None = None


class MiniCLIP(nn.Module):
    """Frozen TinyCLIP parts plus the trained attention adapter, class-token projector and
    text adapter."""

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        resolution: int,
        layers: list[int],
        radii: list[int],
        sigma: float = 4.0,
        adapter_heads: int | None = None,
        backbone_autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext
        ),
    ) -> None:
        super().__init__()
        self.tower = FrozenVisualTower(clip.visual, resolution, layers)
        # reduced precision for the frozen image tower only (``Runtime.backbone_autocast``)
        self.backbone_autocast = backbone_autocast
        self.ln_post = clip.visual.ln_post
        self.proj = clip.visual.proj
        width = self.tower.width
        embed = self.proj.shape[1] if self.proj is not None else width
        text_width = clip.token_embedding.weight.shape[1]
        # Created in the authors' order (insert_adapter): projector, attention, then text.
        self.cls_proj = ClassTokenProjector(width, embed)
        self.attn_adapter = Adaptor(width, adapter_heads, residual=True)
        self.text = AdaptedTextTower(clip, TextAdapter(text_width))
        self.tokenizer = tokenizer
        self.radii = len(radii)
        self.register_buffer("kernels", aggregation_weights(radii, sigma), persistent=False)

    def trainable(self) -> dict[str, nn.Parameter]:
        """The three trained parts, by checkpoint name."""
        named: dict[str, nn.Parameter] = {}
        for prefix, module in (
            ("text_adapter", self.text.adapter),
            ("attn_adapter", self.attn_adapter),
            ("cls_proj", self.cls_proj),
        ):
            named.update({f"{prefix}.{k}": v for k, v in module.named_parameters()})
        return named

    def textual_parameters(self) -> list[nn.Parameter]:
        return list(self.text.adapter.parameters())

    def visual_parameters(self) -> list[nn.Parameter]:
        return list(self.cls_proj.parameters()) + list(self.attn_adapter.parameters())

    def encode_text(self, aliases: Sequence[str]) -> torch.Tensor:
        """B aliases -> [B, 2, E] unit (normal, abnormal) features, each alias encoded once."""
        unique = list(dict.fromkeys(aliases))
        sentences = [sentence for alias in unique for sentence in state_prompts(alias)]
        tokens = self.tokenizer(sentences).to(self.kernels.device)  # [2U, T]
        features = self.text(tokens).reshape(len(unique), 2, -1)
        index = torch.tensor([unique.index(a) for a in aliases], device=features.device)
        return features[index]

    def frozen_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [L, B, 1+N, C] tokens of the read blocks (no grad)."""
        with torch.no_grad(), self.backbone_autocast():
            return self.tower(images).float()

    def encode_image(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[L, B, 1+N, C] -> unit class embedding [B, E], unit fused patch features [B, N, E]."""
        layers = tokens.shape[0]
        cls = F.normalize(self.cls_proj(tokens[-CLASS_TOKEN_LAYERS:, :, 0]), dim=-1)  # [2, B, E]
        cls = F.normalize(cls.sum(dim=0), dim=-1)
        windows = spatial_aggregation(tokens, self.kernels)[:, :, 1:]  # [L*R, B, N, C]
        projected = self.ln_post(self.attn_adapter(windows))
        projected = projected @ self.proj if self.proj is not None else projected
        per_layer = projected.reshape(layers, self.radii, *projected.shape[1:]).sum(dim=1)
        patches = F.normalize(F.normalize(per_layer, dim=-1).sum(dim=0), dim=-1)  # [B, N, E]
        return cls, patches

    def score(self, tokens: torch.Tensor, text: torch.Tensor) -> MiniOutputs:
        """[L, B, 1+N, C] frozen tokens, [B, 2, E] (or [2, E]) unit text -> MiniOutputs."""
        cls, patches = self.encode_image(tokens)
        text = text.to(cls.dtype).expand(cls.shape[0], -1, -1)
        difference = (text[:, 1] - text[:, 0]) / TEMPERATURE  # [B, E]
        image_logit = (cls * difference).sum(dim=-1)
        map_logit = torch.einsum("bne,be->bn", patches, difference)
        side = self.tower.grid
        image_logits = torch.einsum("be,bke->bk", cls, text) / TEMPERATURE  # [B, 2]
        map_logits = torch.einsum("bne,bke->bnk", patches, text) / TEMPERATURE  # [B, N, 2]
        return MiniOutputs(
            image_logit,
            map_logit.reshape(-1, side, side),
            patches,
            image_logits,
            map_logits.reshape(-1, side, side, 2),
        )

    def forward(self, images: torch.Tensor, aliases: Sequence[str]) -> MiniOutputs:
        """[B, 3, S, S] normalised images and each image's alias -> MiniOutputs."""
        return self.score(self.frozen_tokens(images), self.encode_text(aliases))


class MiniCLIPGraph(nn.Module):
    """miniCLIP's prediction as one module: normalised images [B,3,S,S] -> (class-token
    scores [B], patch maps [B,S,S], bilinear then Gaussian ``sigma``); the category's
    prompt features ``text`` [2, E] are a constant."""

    def __init__(self, model: MiniCLIP, text: torch.Tensor, sigma: float, size: int) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text", text)
        self.sigma, self.size = sigma, size

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.score(self.model.frozen_tokens(images), self.text)
        scores = torch.sigmoid(out.image_logit.float())
        maps = torch.sigmoid(out.map_logit.float())  # [B, h, w]
        return scores, anomaly_map(maps, self.size, self.sigma)

"""AF-CLIP (Fang, Lv, Su, ACM MM 2025): a frozen CLIP with aggregated, adapted patch tokens
scored against learned state prompts; miniCLIP is the same on TinyCLIP.

Data path: frozen ViT at the configured size -> tokens of chosen layers -> multi-scale
spatial aggregation -> shared adaptor -> CLIP ln_post + projection -> cosine / 0.07 with the
two prompts, summed over token sets -> softmax. Class token -> image score, patches -> map.
Few-shot adds a memory bank of the aggregated (not adapted) tokens (Sec. 3.5).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ad_afclip.adaptor import Adaptor
from ad_afclip.aggregation import aggregation_weights, spatial_aggregation
from ad_afclip.prompts import StatePrompts
from adcore.api import ConfigError, anomaly_map, nearest_neighbours, plain_block, residual_block

TEMPERATURE = 0.07


def interpolate_positional_embedding(position: torch.Tensor, grid: int) -> torch.Tensor:
    """[1+g*g, C] -> [1+grid*grid, C], bilinear on the patch part (align_corners=False, no
    antialias), as both authors' ``VisionTransformer.forward``; unchanged when g == grid."""
    old = round((position.shape[0] - 1) ** 0.5)
    if old == grid:
        return position
    patches = position[1:].reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    resized = F.interpolate(patches, size=(grid, grid), mode="bilinear", align_corners=False)
    resized = resized.permute(0, 2, 3, 1).reshape(grid * grid, -1).to(position.dtype)
    return torch.cat([position[:1], resized], dim=0)


class FrozenVisualTower(nn.Module):
    """An open_clip ViT run at ``resolution``, returning tokens after chosen blocks.

    Plain blocks run as ``residual_block`` (the same arithmetic, attention through the
    fused kernel, which at 1,370 tokens never builds the [L, L] matrices); others as they are.

    The patch grid is ``resolution // patch``; a remainder (518 px with 16 px patches) is the
    right and bottom border the strided patch convolution never covers, as in the authors' code.
    """

    def __init__(self, visual: nn.Module, resolution: int, layers: list[int]) -> None:
        super().__init__()
        required = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer")
        if not all(hasattr(visual, name) for name in required):
            raise ConfigError(
                f"The backbone's image tower ({type(visual).__name__}) is not an open_clip "
                "VisionTransformer.",
                "AF-CLIP needs a ViT backbone such as ViT-L-14-336 or ViT-B-16.",
            )
        patch = visual.conv1.kernel_size[0]
        if resolution < patch:
            raise ConfigError(
                f"Resolution {resolution} is below the backbone's patch size {patch}.",
                f"Set model.resolution to at least {patch} (the authors use 518).",
            )
        depth = len(visual.transformer.resblocks)
        if not layers or min(layers) < 1 or max(layers) > depth:
            raise ConfigError(
                f"Layers {layers} are outside the backbone's 1..{depth} blocks.",
                f"Choose model.layers between 1 and {depth}.",
            )
        self.visual = visual
        self.layers = sorted(layers)
        self.grid = resolution // patch
        self.register_buffer(
            "position",
            interpolate_positional_embedding(visual.positional_embedding.detach(), self.grid),
            persistent=False,
        )

    @property
    def width(self) -> int:
        return self.visual.conv1.out_channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [L, B, 1+N, C] tokens after each chosen block (before
        ``ln_post``)."""
        visual = self.visual
        x = visual.conv1(images.to(visual.conv1.weight.dtype))  # [B, C, h, w]
        x = x.flatten(2).transpose(1, 2)  # [B, N, C]
        cls = visual.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.position.to(x.dtype)
        x = visual.ln_pre(x)
        taken = []
        for index, block in enumerate(visual.transformer.resblocks[: self.layers[-1]], start=1):
            x = residual_block(block, x) if plain_block(block) else block(x)  # fused attention
            if index in self.layers:
                taken.append(x)
        return torch.stack(taken)


@dataclass
class Outputs:
    """``image_logit`` [B] and ``map_logit`` [B, h, w] are logit(abnormal) - logit(normal);
    ``patch_tokens`` [S, B, N, E] are the adapted, projected patch tokens of every set;
    ``image_logits`` [B, 2] and ``map_logits`` [B, h, w, 2] the (normal, abnormal) logits the
    released training's softmax takes."""

    image_logit: torch.Tensor
    map_logit: torch.Tensor
    patch_tokens: torch.Tensor
    image_logits: torch.Tensor | None = None
    map_logits: torch.Tensor | None = None


class AFCLIP(nn.Module):
    """The full detector: frozen CLIP parts plus the trained adaptor and prompts."""

    def __init__(
        self,
        clip: nn.Module,
        tokenizer: Callable[[list[str]], torch.Tensor],
        resolution: int,
        layers: list[int],
        radii: list[int],
        sigma: float = 4.0,
        prompt_length: int = 12,
        adaptor_heads: int | None = None,
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
        self.prompts = StatePrompts(clip, tokenizer, prompt_length)
        self.adaptor = Adaptor(self.tower.width, adaptor_heads)
        self.register_buffer("kernels", aggregation_weights(radii, sigma), persistent=False)

    def trainable(self) -> dict[str, nn.Parameter]:
        """Only the prompts' context and the adaptor learn."""
        named = {"prompts.context": self.prompts.context}
        named.update({f"adaptor.{k}": v for k, v in self.adaptor.named_parameters()})
        return named

    def aggregated_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """[B, 3, S, S] normalised -> [S_sets, B, 1+N, C] aggregated tokens (frozen path)."""
        with torch.no_grad():
            with self.backbone_autocast():
                tokens = self.tower(images)
            return spatial_aggregation(tokens.float(), self.kernels)

    def project(self, tokens: torch.Tensor) -> torch.Tensor:
        """[..., T, C] adapted tokens -> [..., T, E] in CLIP's joint space."""
        x = self.ln_post(tokens)
        return x @ self.proj if self.proj is not None else x

    def forward(self, images: torch.Tensor, text: torch.Tensor | None = None) -> Outputs:
        """[B, 3, S, S] normalised images (and optional cached [2, E] text) -> Outputs."""
        return self.score(self.aggregated_tokens(images), text)

    def score(self, aggregated: torch.Tensor, text: torch.Tensor | None = None) -> Outputs:
        """[S, B, 1+N, C] aggregated tokens, [2, E] unit text (None: from the prompts)."""
        tokens = self.project(self.adaptor(aggregated))  # [S, B, 1+N, E]
        text = self.prompts() if text is None else text
        logits = torch.einsum("sbte,pe->btp", F.normalize(tokens, dim=-1), text.to(tokens.dtype))
        logits = logits / TEMPERATURE  # summed over the S token sets
        difference = logits[..., 1] - logits[..., 0]  # [B, 1+N]
        side = self.tower.grid
        return Outputs(
            image_logit=difference[:, 0],
            map_logit=difference[:, 1:].reshape(-1, side, side),
            patch_tokens=tokens[:, :, 1:],
            image_logits=logits[:, 0],
            map_logits=logits[:, 1:].reshape(-1, side, side, 2),
        )


def memory_scores(
    tokens: torch.Tensor, bank: torch.Tensor, chunk: int = 4096, chunked: bool = True
) -> torch.Tensor:
    """[S, B, N, C] query patch tokens, [S, M, C] unit-norm bank -> [B, N] scores.

    Per set, min over the bank of (1 - cos) / 2, then the mean over sets (Sec. 3.5), through
    the host's exact chunked search (memory bounded for large banks); without ``chunked``
    (the exported graph, whose batch size is free) in one product per set.
    """
    sets, batch, length, channels = tokens.shape
    queries = tokens.float().reshape(sets, batch * length, channels)  # [S, B*N, C]
    if chunked:
        distances, _ = nearest_neighbours(queries, bank.float(), 1, "cosine", chunk=chunk)
        nearest = distances[..., 0]  # [S, B*N]
    else:
        similarity = F.normalize(queries, dim=-1) @ F.normalize(bank.float(), dim=-1).transpose(
            1, 2
        )
        nearest = 1.0 - similarity.amax(dim=-1)
    return (nearest / 2).mean(dim=0).reshape(batch, length)


class AFCLIPGraph(nn.Module):
    """AF-CLIP's prediction as one module: normalised images [B,3,S,S] -> (scores [B],
    maps [B,S,S]); zero-shot sigmoid scores, few-shot memory + ``fewshot_weight`` x
    zero-shot (Sec. 3.5), maps upsampled and smoothed. The prompt features ``text`` [2, E]
    and the bank [S, M, C] (None: zero-shot) are constants. ``predict`` runs it chunked,
    the exported graph unchunked."""

    def __init__(
        self,
        model: AFCLIP,
        text: torch.Tensor,
        bank: torch.Tensor | None,
        fewshot_weight: float,
        sigma: float,
        size: int,
        chunked: bool = True,
    ) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("text", text)
        self.register_buffer("bank", bank)
        self.fewshot_weight, self.sigma, self.size, self.chunked = (
            fewshot_weight,
            sigma,
            size,
            chunked,
        )

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        aggregated = self.model.aggregated_tokens(images)
        out = self.model.score(aggregated, self.text)
        scores = torch.sigmoid(out.image_logit.float())
        maps = torch.sigmoid(out.map_logit.float())  # [B, h, w]
        if self.bank is not None:
            memory = memory_scores(aggregated[:, :, 1:], self.bank, chunked=self.chunked)
            memory = memory.reshape(maps.shape)
            scores = memory.flatten(1).amax(dim=1) + self.fewshot_weight * scores
            maps = memory + self.fewshot_weight * maps
        return scores, anomaly_map(maps, self.size, self.sigma)


def grid_labels(masks: torch.Tensor, grid: int) -> torch.Tensor:
    """[B, H, W] float masks in [0, 1] -> [B, grid, grid] patch targets, as both authors'
    training: bilinear (align_corners=False), values below 0.5 -> 0, above -> 1; a value of
    exactly 0.5 (e.g. a mask edge halfway between two sampled pixels) stays 0.5, a soft
    target that the alignment loss leaves out of both states. The masks are the loader's
    soft bicubic masks (``TrainingBatch.masks``), as the authors' targets are built."""
    resized = F.interpolate(
        masks[:, None].float(), size=(grid, grid), mode="bilinear", align_corners=False
    )[:, 0]
    return torch.where(resized < 0.5, 0.0, torch.where(resized > 0.5, 1.0, 0.5))

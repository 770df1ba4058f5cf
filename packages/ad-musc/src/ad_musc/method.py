"""MuSc as an ``adcore`` transductive method: the test set is scored jointly, nothing is fitted.

What a set of N images keeps (ViT-L/14 at 518 px, K = 4 blocks, L = 37 x 37 patches, C =
1024): the patch tokens of the K blocks, K * L * C floats per image (21.4 MiB), one block's
LNAMD features at a time (5.3 MiB per image), the maps (S * S floats, 1.0 MiB per image) and
the class embeddings; the mutual scoring adds a fixed block of score_chunk^2 * L^2
similarities and score_chunk * L * N distances. So memory grows linearly with N, about
28 MiB per image, and compute quadratically (every image against every other).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ad_musc.backbone import ClipPatchTokens
from ad_musc.model import rscin, set_patch_scores, upsampled_maps
from adcore.api import (
    CLIP_MEAN,
    CLIP_STD,
    PluginError,
    Prediction,
    Preprocessing,
    Runtime,
    TransductiveMethod,
    load_open_clip,
)

if TYPE_CHECKING:
    from ad_musc.config import MuscConfig
    from adcore.api import FitContext


class Musc(TransductiveMethod):
    """LNAMD + MSM over the set's patch tokens, RsCIN over its class tokens (Sec. 3)."""

    def __init__(self, config: MuscConfig, runtime: Runtime, clip: nn.Module | None = None):
        """``clip``: an already built open_clip model instead of ``config.backbone`` (tests)."""
        self.config = config
        self.runtime = runtime
        self.device = torch.device(runtime.device)
        # the authors' open_clip ``image_transform(518, is_train=False)``:
        # Resize((518, 518), BICUBIC), CenterCrop(518) (a no-op), OpenAI statistics; their
        # masks: Resize((518, 518)) with torchvision's default bilinear filter
        self.geometry = Preprocessing(
            size=config.resolution,
            resize="stretch",
            filter="bicubic",
            mask_filter="bilinear",
            mean=CLIP_MEAN,
            std=CLIP_STD,
        )
        if clip is None:
            clip, self._identity = load_open_clip(
                config.backbone, config.pretrained, seed=runtime.seed, quick_gelu=config.quick_gelu
            )
        else:
            from adcore.api import backbone_identity, parse_weights

            self._identity = backbone_identity(
                clip, architecture=config.backbone, source=parse_weights("none")
            )
        self.tower = ClipPatchTokens(clip.visual, config.resolution, config.layers)
        self.tower.to(self.device).eval().requires_grad_(False)
        self.windows = config.rscin_windows("")

    def fit(self, context: FitContext) -> None:
        """Zero-shot: nothing to fit; the category only picks RsCIN's windows."""
        self.windows = self.config.rscin_windows(context.category)

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 [B, 3, S, S] -> patch tokens [K, B, L, C] and class embeddings [B, D], fp32."""
        tokens, embeddings = [], []
        for chunk in images.split(self.config.extract_chunk):
            with self.runtime.backbone_autocast():
                t, e = self.tower(self.geometry.normalize(chunk.to(self.device)))
            tokens.append(t.float())
            embeddings.append(e.float())
        return torch.cat(tokens, dim=1), torch.cat(embeddings)

    @torch.no_grad()
    def predict_set(self, batches: Iterable[torch.Tensor], size: int) -> Prediction:
        """The set's batches -> scores [N] (RsCIN of each map's maximum), maps [N, S, S]."""
        tokens, embeddings = self._set_features(batches, size)  # [K, N, L, C], [N, D]
        cfg = self.config
        patch_scores = set_patch_scores(
            tokens,
            self.tower.grid,
            cfg.aggregation_degrees,
            cfg.topmin_min,
            cfg.topmin_max,
            cfg.score_chunk,
        )  # [N, L]
        del tokens
        maps = upsampled_maps(patch_scores, self.tower.grid, self.geometry.output_size)
        scores = maps.flatten(1).amax(dim=1)
        return Prediction(scores=rscin(scores, embeddings, self.windows), maps=maps)

    def _set_features(
        self, batches: Iterable[torch.Tensor], size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every batch's features written into one [K, N, L, C] tensor (no second copy)."""
        tokens: torch.Tensor | None = None
        embeddings: torch.Tensor | None = None
        filled = 0
        for batch in batches:
            t, e = self.features(batch)
            if tokens is None or embeddings is None:
                tokens = t.new_empty(t.shape[0], max(size, len(e)), *t.shape[2:])
                embeddings = e.new_empty(max(size, len(e)), e.shape[1])
            if filled + len(e) > size:
                filled += len(e)
                break
            tokens[:, filled : filled + len(e)] = t
            embeddings[filled : filled + len(e)] = e
            filled += len(e)
        if tokens is None or embeddings is None or filled != size:
            raise PluginError(
                f"MuSc was told the set holds {size} images but received "
                f"{'more' if filled > size else filled}.",
                "Pass predict_set every batch of the set and its total number of images.",
            )
        return tokens, embeddings

    def modules(self) -> dict[str, nn.Module]:
        return {"vit": self.tower}

    @torch.no_grad()
    def backbone_forward(self, images: torch.Tensor) -> Any:
        return self.tower(images)

    def weights_identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def fitted_state(self) -> dict[str, Any]:
        """Nothing is fitted: the set is the reference. Saved: RsCIN's windows and the
        backbone's digest, so ``ad predict`` refuses other weights."""
        return {"rscin_windows": list(self.windows), "backbone_digest": self._identity["digest"]}

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        if state.get("backbone_digest") != self._identity["digest"]:
            raise PluginError(
                "The saved MuSc run used other backbone weights "
                f"(digest {state.get('backbone_digest')}, now {self._identity['digest']}).",
                "Use the same weights (and seed, for random weights) as the saved run.",
            )
        self.windows = tuple(int(k) for k in state["rscin_windows"])

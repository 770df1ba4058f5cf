"""AnomalyDINO as an ``adcore`` method: a bank of (rotated) reference patches, kNN predict."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ad_dino.backbone import build_vit
from ad_dino.model import (
    AnomalyDinoGraph,
    DinoPatchFeatures,
    background_mask,
    normalise_bank,
    patch_distances,
    patch_map,
    rotate,
    top_fraction_score,
)
from adcore.api import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConfigError,
    ExportableMethod,
    FitContext,
    PluginError,
    Prediction,
    Preprocessing,
    Runtime,
    backbone_identity,
    parse_weights,
)

if TYPE_CHECKING:
    from ad_dino.config import AnomalyDinoConfig

# Settings that change the bank; a saved bank only loads into a model that agrees on them.
_BANK_KEYS = (
    "backbone",
    "pretrained",
    "resolution",
    "resize",
    "mask_references",
    "mask_threshold",
    "mask_border",
    "mask_kernel",
    "rotation",
    "distance",
)


class AnomalyDino(ExportableMethod):
    """Nearest-neighbour patch distances to a few references on DINOv2 features (Sec. 3)."""

    def __init__(
        self, config: AnomalyDinoConfig, runtime: Runtime, vit: nn.Module | None = None
    ) -> None:
        """``vit``: an already built timm ViT to use instead of ``config.backbone`` (tests)."""
        self.config = config
        self.runtime = runtime
        self.device = torch.device(runtime.device)
        # the authors' prepare_image: Resize(resolution, BICUBIC) of the shorter side,
        # ToTensor, ImageNet statistics (the cut to a multiple of the patch is the model's)
        self.geometry = Preprocessing(
            size=config.resolution,
            resize=config.resize,
            filter="bicubic",
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
        )
        if vit is None:
            vit, self._identity = build_vit(config.backbone, config.pretrained, runtime.seed)
        else:
            vit = vit.eval().requires_grad_(False)
            self._identity = backbone_identity(
                vit, architecture=type(vit).__name__, source=parse_weights("none")
            )
        self.model = DinoPatchFeatures(vit, runtime.backbone_autocast).to(self.device)
        side = self.geometry.output_size
        if side < self.model.patch:
            raise ConfigError(
                f"model.resolution {config.resolution} is smaller than the backbone's patch "
                f"size {self.model.patch}.",
                f"Set model.resolution to at least {self.model.patch} (the authors use 448).",
            )
        self.bank: torch.Tensor | None = None  # [M, D] on the device, as the search reads it
        self.masks_test = False  # test patches masked for the fitted category

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 images in chunks of ``extract_chunk`` -> patch features and grid."""
        # uint8 [B, 3, S, S] -> [B, h*w, D], (h, w)
        parts, grid = [], (0, 0)
        for chunk in images.split(self.config.extract_chunk):
            features, grid = self.model(self.geometry.normalize(chunk.to(self.device)))
            parts.append(features)
        return torch.cat(parts) if len(parts) > 1 else parts[0], grid

    def _mask(self, features: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        # [B, N, D] -> [B, N] bool
        cfg = self.config
        return background_mask(features, grid, cfg.mask_threshold, cfg.mask_kernel, cfg.mask_border)

    @torch.no_grad()
    def fit(self, context: FitContext) -> None:
        """Patch features of every reference (and its rotations) into the memory bank."""
        cfg = self.config
        rotating = cfg.rotates_category(context.category)
        self.masks_test = cfg.masks_category(context.category)
        mask_references = self.masks_test and cfg.mask_references
        kept: list[torch.Tensor] = []  # [n_i, D]
        for batch in context.batches:
            # rotated: one reference at a time, so at most its eight views are held
            for views in batch.split(1) if rotating else [batch]:
                views = rotate(views.to(self.device)) if rotating else views
                features, grid = self.features(views)  # [V, N, D]
                if mask_references:
                    kept.append(features[self._mask(features, grid)])
                else:
                    kept.append(features.reshape(-1, features.shape[-1]))
        if not kept:
            raise PluginError(
                f"AnomalyDINO got no reference images for category {context.category!r}.",
                "It needs normal images for its memory bank: use k_shot >= 1 (the paper uses "
                "1 to 16), and check that the category's train split holds images.",
            )
        self._use_bank(torch.cat(kept), f"the memory bank of category {context.category!r}")

    def _use_bank(self, features: torch.Tensor, what: str, normalised: bool = False) -> None:
        if len(features) < self.config.num_neighbors:
            raise ConfigError(
                f"model.num_neighbors is {self.config.num_neighbors}, but {what} holds "
                f"{len(features)} patch features.",
                "Set model.num_neighbors to at most that (the paper uses 1), or give more "
                "references (or set model.mask_references to false).",
            )
        if not normalised:
            features = normalise_bank(features.float(), self.config.distance)
        self.bank = features.to(self.device)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Patch score = distance to the nearest reference patch, masked patches 0; image
        score = mean of the top 1 %; map = the patch scores upsampled and smoothed."""
        # uint8 [B, 3, S, S] -> scores [B], maps [B, S, S]
        if self.bank is None:
            raise PluginError(
                "AnomalyDINO predicts before it was fitted.",
                "Call fit with the category's reference images, or load a fitted state first.",
            )
        cfg = self.config
        features, grid = self.features(images)
        distances = patch_distances(
            features, self.bank, cfg.num_neighbors, cfg.distance, cfg.search_chunk
        )
        if self.masks_test:
            distances = distances * self._mask(features, grid)
        size = (images.shape[-2], images.shape[-1])
        return Prediction(
            scores=top_fraction_score(distances, cfg.top_fraction),
            maps=patch_map(distances, grid, size, cfg.smoothing_sigma),
        )

    def export_module(self) -> nn.Module:
        """The fitted prediction as one module (the masking's principal component found by
        repeated squaring: ONNX has no eigen-decomposition; ``ad export`` checks parity)."""
        if self.bank is None:
            raise PluginError("AnomalyDINO has no memory bank to export.", "Fit it first.")
        cfg = self.config
        mask = None
        if self.masks_test:
            mask = {
                "threshold": cfg.mask_threshold,
                "kernel": cfg.mask_kernel,
                "border": cfg.mask_border,
            }
        return AnomalyDinoGraph(
            self.model, self.bank, cfg.num_neighbors, cfg.distance, cfg.top_fraction,
            cfg.smoothing_sigma, mask,
        ).eval()  # fmt: skip

    def modules(self) -> dict[str, nn.Module]:
        return {"vit": self.model}

    @torch.no_grad()
    def backbone_forward(self, images: torch.Tensor) -> Any:
        return self.model(images)[0]

    def weights_identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def memory_bank_bytes(self) -> int:
        if self.bank is None:
            return 0
        return self.bank.numel() * self.bank.element_size()

    def fitted_state(self) -> dict[str, Any]:
        if self.bank is None:
            raise PluginError("AnomalyDINO has no fitted state yet.", "Fit it before saving.")
        return {
            "bank": self.bank.detach().cpu().clone(),
            "masking": self.masks_test,
            "config": {key: getattr(self.config, key) for key in _BANK_KEYS},
            "backbone_digest": self._identity["digest"],
        }

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        ours = {key: getattr(self.config, key) for key in _BANK_KEYS}
        differing = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        if differing:
            raise PluginError(
                f"The saved AnomalyDINO bank was built with other settings: {differing} "
                "(saved, current).",
                "Load it with the settings it was saved with, or fit again.",
            )
        if state.get("backbone_digest") != self._identity["digest"]:
            raise PluginError(
                "The saved AnomalyDINO bank was built with other backbone weights "
                f"(digest {state.get('backbone_digest')}, now {self._identity['digest']}).",
                "Use the same weights (and seed, for random weights), or fit again.",
            )
        self.masks_test = bool(state["masking"])
        self._use_bank(state["bank"].detach().float(), "the saved bank", normalised=True)

"""PatchCore as an ``adcore`` method: streaming fit into a coreset memory bank, k-NN predict."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ad_patchcore.backbone import authors_batchnorm_step, build_backbone
from ad_patchcore.coreset import approximate_greedy_coreset, project, random_projection
from ad_patchcore.model import (
    DiskRows,
    LocallyAwarePatchFeatures,
    MemoryBank,
    PatchCoreGraph,
    gather_rows,
)
from adcore.api import (
    ExportableMethod,
    FitContext,
    PluginError,
    Prediction,
    Preprocessing,
    Runtime,
    anomaly_map,
)

# Settings that change the bank; a saved bank only loads into a model that agrees on them.
_BANK_KEYS = (
    "backbone",
    "pretrained",
    "fidelity",
    "layers",
    "resolution",
    "crop",
    "pretrain_embed_dimension",
    "target_embed_dimension",
    "patch_size",
)

if TYPE_CHECKING:
    from ad_patchcore.config import PatchCoreConfig


class PatchCore(ExportableMethod):
    """Memory bank of locally aware patch features, subsampled by greedy coreset (Sec. 3)."""

    def __init__(
        self,
        config: PatchCoreConfig,
        runtime: Runtime,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """``input_size``: the (H, W) of the released code's load-time BatchNorm step
        (``fidelity: authors_code``); by default the square the geometry produces."""
        self.config = config
        self.runtime = runtime
        self.device = torch.device(runtime.device)
        backbone, self._identity = build_backbone(
            config.backbone, config.pretrained, config.layers, runtime.seed
        )
        # the released code's transforms: Resize(256) (shorter side, PIL bilinear), CenterCrop;
        # mean/std are the weights' own (timm's pretrained config: ImageNet for tv_in1k)
        weights = Preprocessing.from_timm(backbone.pretrained_cfg)
        self.geometry = Preprocessing(
            size=config.resolution,
            resize="shorter_side",
            filter="bilinear",
            crop=config.crop,
            mean=weights.mean,
            std=weights.std,
        )
        backbone = backbone.to(self.device)
        if config.fidelity == "authors_code":
            side = self.geometry.output_size
            authors_batchnorm_step(backbone, input_size or (side, side))
        self.model = LocallyAwarePatchFeatures(
            backbone,
            config.patch_size,
            config.pretrain_embed_dimension,
            config.target_embed_dimension,
            runtime.backbone_autocast,
        ).to(self.device)
        self.memory: MemoryBank | None = None
        self.fit_seconds: dict[str, float] = {}  # feature extraction and coreset, last fit

    def _features(
        self, images: torch.Tensor, normalized: bool = False
    ) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 images (or already normalised ones) in chunks of ``extract_chunk`` ->
        patch features."""
        # [B, 3, H, W] -> [B, h*w, D], (h, w)
        parts, grid = [], (0, 0)
        for chunk in images.split(self.config.extract_chunk):
            chunk = chunk.to(self.device)
            features, grid = self.model(chunk if normalized else self.geometry.normalize(chunk))
            parts.append(features)
        return torch.cat(parts) if len(parts) > 1 else parts[0], grid

    def _project(self, features: torch.Tensor) -> torch.Tensor:
        """The coreset's random projection of every bank row, on the run's device.

        On the CPU the whole bank goes through one product, as in the authors' sampler: a
        BLAS product's rounding depends on the number of rows, and the greedy choice must
        see their numbers. Elsewhere rows go in chunks to bound device memory.
        """
        # [N, D] -> [N, d]
        cfg = self.config
        dim = features.shape[1]
        if dim == cfg.coreset_projection_dim:
            return features.to(self.device)
        weight = random_projection(dim, cfg.coreset_projection_dim, self.runtime.seed, self.device)
        if self.device.type == "cpu":
            return project(features, weight)
        return torch.cat(
            [project(part.to(self.device), weight) for part in features.split(cfg.coreset_chunk)]
        )

    @torch.no_grad()
    def fit(self, context: FitContext) -> None:
        """Stream the support images into patch features, then take the coreset."""
        cfg = self.config
        kept: list[torch.Tensor] = []  # [n_i, D] on the CPU
        disk = DiskRows() if cfg.feature_store == "disk" else None
        started = time.perf_counter()
        try:
            for batch in context.batches:
                features, _ = self._features(batch)
                rows = features.reshape(-1, features.shape[-1])
                if disk is None:
                    kept.append(rows.cpu())
                else:
                    disk.append(rows)
            if not kept and (disk is None or not disk.rows):
                raise PluginError(
                    f"PatchCore got no training images for category {context.category!r}.",
                    "It needs normal images to build its memory bank: use k_shot >= 1 or "
                    "'all', and check that the category's train split holds images.",
                )
            features = gather_rows(kept) if disk is None else disk.tensor()  # [N, D]
            extracted = time.perf_counter()
            if cfg.coreset_ratio < 1.0:
                chosen = approximate_greedy_coreset(
                    self._project(features),
                    cfg.coreset_ratio,
                    self.runtime.seed,
                    cfg.coreset_starting_points,
                ).cpu()
                features = features[chosen]
            elif disk is not None:
                features = features.clone()  # the bank outlives the file
        finally:
            if disk is not None:
                disk.close()
        self._use_bank(features, f"the memory bank of category {context.category!r}")
        self.fit_seconds = {
            "features": extracted - started,
            "coreset": time.perf_counter() - extracted,
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Patch score = mean distance to the k nearest bank features (eq. 6); max or eq. 7."""
        # uint8 [B, 3, H, W] -> scores [B], maps [B, H, W]
        return self._score(images, normalized=False)

    @torch.no_grad()
    def predict_normalized(self, images: torch.Tensor) -> Prediction:
        """``predict`` for images already resized and normalised (float [B, 3, H, W])."""
        return self._score(images, normalized=True)

    def _score(self, images: torch.Tensor, normalized: bool) -> Prediction:
        # [B, 3, H, W] -> scores [B], maps [B, H, W]
        if self.memory is None:
            raise PluginError(
                "PatchCore predicts before it was fitted.",
                "Call fit with the category's normal images, or load a fitted state first.",
            )
        cfg = self.config
        features, grid = self._features(images, normalized)
        scores, patch_scores = self.memory.score(
            features,
            metric="squared_l2" if cfg.fidelity == "authors_code" else "l2",
            num_neighbors=cfg.num_neighbors,
            reweight_neighbors=cfg.reweight_neighbors if cfg.scoring == "reweighted" else None,
            search_chunk=cfg.search_chunk,
        )
        size = (images.shape[-2], images.shape[-1])
        maps = anomaly_map(patch_scores.reshape(-1, *grid), size, cfg.smoothing_sigma)
        return Prediction(scores=scores, maps=maps)

    def export_module(self) -> nn.Module:
        """The fitted PatchCore as one module (:class:`~ad_patchcore.model.PatchCoreGraph`)."""
        if self.memory is None:
            raise PluginError("PatchCore has no memory bank to export.", "Fit it first.")
        cfg = self.config
        return PatchCoreGraph(
            self.model,
            self.memory.features,
            "squared_l2" if cfg.fidelity == "authors_code" else "l2",
            cfg.num_neighbors,
            cfg.reweight_neighbors if cfg.scoring == "reweighted" else None,
            cfg.smoothing_sigma,
        ).eval()

    def modules(self) -> dict[str, nn.Module]:
        return {"patch_features": self.model}

    @torch.no_grad()
    def backbone_forward(self, images: torch.Tensor) -> Any:
        with self.runtime.backbone_autocast():
            laid_out = images.contiguous(memory_format=self.model.layout)
            return [m.float() for m in self.model.backbone(laid_out)]

    def weights_identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def memory_bank_bytes(self) -> int:
        return 0 if self.memory is None else self.memory.nbytes

    def fitted_state(self) -> dict[str, Any]:
        if self.bank is None:
            raise PluginError("PatchCore has no fitted state yet.", "Fit it before saving.")
        return {
            "bank": self.bank.clone(),
            "config": {key: getattr(self.config, key) for key in _BANK_KEYS},
            "backbone_digest": self._identity["digest"],
        }

    def load_fitted_state(self, state: dict[str, Any]) -> None:
        saved = state.get("config", {})
        ours = {key: getattr(self.config, key) for key in _BANK_KEYS}
        differing = {k: (saved.get(k), v) for k, v in ours.items() if saved.get(k) != v}
        if differing:
            raise PluginError(
                f"The saved PatchCore bank was built with other settings: {differing} "
                "(saved, current).",
                "Load it with the settings it was saved with, or fit again.",
            )
        if state.get("backbone_digest") != self._identity["digest"]:
            raise PluginError(
                "The saved PatchCore bank was built with other backbone weights "
                f"(digest {state.get('backbone_digest')}, now {self._identity['digest']}).",
                "Use the same weights (and seed, for random weights), or fit again.",
            )
        self._use_bank(state["bank"].detach().float().cpu().contiguous(), "the saved bank")

    def _use_bank(self, bank: torch.Tensor, what: str) -> None:
        """Search ``bank`` [M, D] from now on (refused when it has too few rows)."""
        self.memory = MemoryBank(bank, self.runtime.device, self.config.num_neighbors, what)

    @property
    def bank(self) -> torch.Tensor | None:
        """The memory bank's features [M, D] on the CPU, once fitted."""
        return None if self.memory is None else self.memory.features

"""PatchCore as an ``adcore`` method: streaming fit into a coreset memory bank, k-NN predict."""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import nn

from ad_patchcore.backbone import build_backbone
from ad_patchcore.coreset import approximate_greedy_coreset, random_projection
from ad_patchcore.model import LocallyAwarePatchFeatures, reweighted_score
from ad_patchcore.plugin import PatchCoreConfig
from ad_patchcore.search import NearestNeighbours
from adcore.api import (
    FitContext,
    InputGeometry,
    Method,
    PluginError,
    Prediction,
    Runtime,
    anomaly_map,
)

# Settings that change the bank; a saved bank only loads into a model that agrees on them.
_BANK_KEYS = (
    "backbone",
    "pretrained",
    "layers",
    "resolution",
    "crop",
    "pretrain_embed_dimension",
    "target_embed_dimension",
    "patch_size",
)


class PatchCore(Method):
    """Memory bank of locally aware patch features, subsampled by greedy coreset (Sec. 3)."""

    def __init__(self, config: PatchCoreConfig, runtime: Runtime) -> None:
        self.config = config
        self.runtime = runtime
        self.device = torch.device(runtime.device)
        self.geometry = InputGeometry(size=config.resolution, crop=config.crop)
        backbone, self._identity = build_backbone(
            config.backbone, config.pretrained, config.layers, runtime.seed
        )
        self.model = LocallyAwarePatchFeatures(
            backbone,
            config.patch_size,
            config.pretrain_embed_dimension,
            config.target_embed_dimension,
            runtime.backbone_autocast,
        ).to(self.device)
        self.bank: torch.Tensor | None = None  # [M, D] on the CPU, the canonical copy
        self._search: NearestNeighbours | None = None
        self.fit_seconds: dict[str, float] = {}  # feature extraction and coreset, last fit

    def _features(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """uint8 images in chunks of ``extract_chunk`` -> patch features."""
        # [B, 3, S, S] -> [B, h*w, D], (h, w)
        parts, grid = [], (0, 0)
        for chunk in images.split(self.config.extract_chunk):
            features, grid = self.model(self.geometry.normalize(chunk.to(self.device)))
            parts.append(features)
        return torch.cat(parts) if len(parts) > 1 else parts[0], grid

    @torch.no_grad()
    def fit(self, context: FitContext) -> None:
        """Stream the support images: keep patch features only, then take the coreset."""
        cfg = self.config
        kept: list[torch.Tensor] = []  # [n_i, D] on the CPU
        projected: list[torch.Tensor] = []  # [n_i, d] on the device
        matrix = None
        started = time.perf_counter()
        for batch in context.batches:
            features, _ = self._features(batch)
            features = features.reshape(-1, features.shape[-1])
            if matrix is None and features.shape[1] > cfg.coreset_projection_dim:
                matrix = random_projection(
                    features.shape[1], cfg.coreset_projection_dim, self.runtime.seed, self.device
                )
            if cfg.coreset_ratio < 1.0:
                projected.append(features @ matrix if matrix is not None else features.clone())
            kept.append(features.cpu())
        if not kept:
            raise PluginError(
                f"PatchCore got no training images for category {context.category!r}.",
                "It needs normal images to build its memory bank: use k_shot >= 1 or 'all', "
                "and check that the category's train split holds images.",
            )
        extracted = time.perf_counter()
        if cfg.coreset_ratio < 1.0:
            chosen = approximate_greedy_coreset(
                torch.cat(projected),
                cfg.coreset_ratio,
                self.runtime.seed,
                cfg.coreset_starting_points,
                cfg.coreset_chunk,
            ).cpu()
            del projected
            self.bank = _gather_rows(kept, chosen)
        else:
            self.bank = _gather_rows(kept, None)
        self._search = NearestNeighbours(self.bank, self.runtime.device)
        self.fit_seconds = {
            "features": extracted - started,
            "coreset": time.perf_counter() - extracted,
        }

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> Prediction:
        """Patch score = mean distance to the k nearest bank features (eq. 6); max or eq. 7."""
        # uint8 [B, 3, S, S] -> scores [B], maps [B, S, S]
        if self._search is None or self.bank is None:
            raise PluginError(
                "PatchCore predicts before it was fitted.",
                "Call fit with the category's normal images, or load a fitted state first.",
            )
        cfg = self.config
        features, (h, w) = self._features(images)
        b, n, dim = features.shape
        flat = features.reshape(-1, dim)
        distances, indices = self._search.search(flat, cfg.num_neighbors, cfg.search_chunk)
        patch_scores = distances.mean(1).reshape(b, n)  # [B, h*w]
        scores, worst = patch_scores.max(1)
        if cfg.scoring == "reweighted":
            rows = torch.arange(b, device=flat.device) * n + worst
            test_feature = flat[rows]  # [B, D]: m_test,*
            nearest = self.bank[indices[rows, 0].cpu()].to(flat.device)  # [B, D]: m*
            _, support = self._search.search(nearest, cfg.reweight_neighbors)
            members = self.bank[support.cpu()].to(flat.device)  # [B, b, D]: N_b(m*)
            neighbourhood = torch.linalg.vector_norm(members - test_feature[:, None], dim=2)
            nearest_distance = torch.linalg.vector_norm(test_feature - nearest, dim=1)
            scores = reweighted_score(scores, nearest_distance, neighbourhood)
        size = self.geometry.output_size
        maps = anomaly_map(patch_scores.reshape(b, h, w), size, cfg.smoothing_sigma)
        return Prediction(scores=scores, maps=maps)

    def modules(self) -> dict[str, nn.Module]:
        return {"patch_features": self.model}

    @torch.no_grad()
    def backbone_forward(self, images: torch.Tensor) -> Any:
        with self.runtime.backbone_autocast():
            return [m.float() for m in self.model.backbone(images)]

    def weights_identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def memory_bank_bytes(self) -> int:
        if self.bank is None:
            return 0
        return self.bank.numel() * self.bank.element_size()

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
        self.bank = state["bank"].detach().float().cpu().contiguous()
        self._search = NearestNeighbours(self.bank, self.runtime.device)


def _gather_rows(chunks: list[torch.Tensor], rows: torch.Tensor | None) -> torch.Tensor:
    """Rows of the concatenated chunks without concatenating them; chunks are freed as used."""
    # list of [n_i, D], [M] -> [M, D]
    total = sum(len(chunk) for chunk in chunks)
    rows = torch.arange(total) if rows is None else rows
    bank = torch.empty(len(rows), chunks[0].shape[1], dtype=chunks[0].dtype)
    offset = 0
    while chunks:
        chunk = chunks.pop(0)
        inside = (rows >= offset) & (rows < offset + len(chunk))
        bank[inside] = chunk[rows[inside] - offset]
        offset += len(chunk)
    return bank

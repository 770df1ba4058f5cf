"""PatchCore's settings: the paper's and the authors' code's defaults, validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from adcore.api import PluginConfig


class PatchCoreConfig(PluginConfig):
    """Defaults are the paper's and the authors' code's (MVTec, wide_resnet50_2, 10 % coreset)."""

    backbone: str = Field("wide_resnet50_2", description="timm CNN that supports features_only.")
    pretrained: str = Field(
        "tv_in1k",
        description="timm pretrained tag (tv_in1k: the torchvision weights the paper used), "
        "a local checkpoint file, or 'none' for random initialisation.",
    )
    layers: list[str] = Field(
        default_factory=lambda: ["layer2", "layer3"],
        min_length=1,
        description="Backbone stages (timm feature_info module names); the first sets the grid.",
    )
    resolution: int = Field(256, ge=16, description="Images are resized to this side.")
    crop: int | None = Field(224, ge=16, description="Centre crop after resizing; null: none.")
    pretrain_embed_dimension: int = Field(1024, ge=1, description="Per-layer pooled dimension.")
    target_embed_dimension: int = Field(1024, ge=1, description="Final patch feature dimension.")
    patch_size: int = Field(3, ge=1, description="Local neighbourhood (odd) aggregated per patch.")
    fidelity: Literal["authors_code", "paper"] = Field(
        "authors_code",
        description="authors_code: the numbers of the released code "
        "(amazon-science/patchcore-inspection): patch scores are faiss's squared L2 "
        "distances (mean over num_neighbors), and the maps smooth those; the backbone gets "
        "the released code's load-time BatchNorm step (one all-ones image through it in "
        "train mode). paper: eq. 6's Euclidean distances and an untouched backbone. Image "
        "rankings agree for num_neighbors 1; maps, pixel metrics and thresholds differ.",
    )
    coreset_ratio: float = Field(0.1, gt=0.0, le=1.0, description="Fraction of features kept.")
    coreset_projection_dim: int = Field(128, ge=1, description="Random projection for coreset.")
    coreset_starting_points: int = Field(
        10, ge=1, description="Random anchors of the approximate greedy coreset (authors' code)."
    )
    num_neighbors: int = Field(1, ge=1, description="k nearest memory features per patch.")
    scoring: Literal["max", "reweighted"] = Field(
        "max",
        description="Image score: max patch score (the released code), or the paper's eq. 7 "
        "re-weighting (its weight from Euclidean distances, applied to the max patch score).",
    )
    reweight_neighbors: int = Field(9, ge=1, description="b of eq. 7 (scoring: reweighted).")
    smoothing_sigma: float = Field(4.0, ge=0.0, description="Gaussian sigma on anomaly maps.")
    extract_chunk: int = Field(8, ge=1, description="Images per backbone forward pass.")
    feature_store: Literal["memory", "disk"] = Field(
        "memory",
        description="Where the fit keeps every patch feature until the coreset is taken: "
        "memory (fastest), or disk, a temporary file mapped into memory, so that resident "
        "memory holds the 128-d projections and the bank (1/8 of the features) and the "
        "page cache the rest; for large training sets (3 MiB a 224 px image).",
    )
    coreset_chunk: int = Field(
        65536,
        ge=1,
        description="Feature rows moved to an accelerator per projection product (on the "
        "CPU the whole bank goes through one product, as in the authors' sampler).",
    )
    search_chunk: int = Field(16384, ge=1, description="Query patches per faiss search call.")

    @field_validator("patch_size")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("patch_size must be odd so each patch stays centred on its position")
        return value

    @model_validator(mode="after")
    def _crop_fits(self) -> PatchCoreConfig:
        if self.crop is not None and self.crop > self.resolution:
            raise ValueError(
                f"crop {self.crop} is larger than resolution {self.resolution} (the shorter "
                f"side is resized to resolution, then the centre crop is taken): set model.crop "
                f"to at most {self.resolution}, or to null for no crop"
            )
        return self

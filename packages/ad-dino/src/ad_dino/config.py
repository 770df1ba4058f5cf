"""AnomalyDINO's settings, named as in the paper and the authors' ``run_anomalydino.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from adcore.api import PluginConfig

# The authors' per-category choices (github dammsi/AnomalyDINO, ``src/utils.py``
# ``get_dataset_info``). Masking: their "agnostic" default, i.e. the MVTec-AD objects whose
# masking test passed (Fig. 2 of the paper), and every VisA category.
MASKED_CATEGORIES = frozenset(
    {"capsule", "hazelnut", "pill", "screw", "toothbrush"}  # MVTec-AD
    | {"candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2"}
    | {"pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"}  # VisA
)
# Rotation, their "informed" choice: the MVTec-AD categories whose references are not all
# oriented alike ("agnostic" rotates every category, "informed" only these).
ROTATED_CATEGORIES = frozenset({"hazelnut", "screw"})


class AnomalyDinoConfig(PluginConfig):
    """Defaults are the authors' run script's: ViT-S/14 at 448 px, "agnostic" preprocessing."""

    backbone: str = Field(
        "vit_small_patch14_dinov2",
        description="timm DINOv2 ViT (vit_small/base/large/giant_patch14_dinov2, or the "
        "_reg4_ variants); the paper's AnomalyDINO-S/B/L are the first three.",
    )
    pretrained: str = Field(
        "lvd142m",
        description="timm pretrained tag (lvd142m: the DINOv2 release the paper used), a "
        "local checkpoint file (timm's or DINOv2's own *_pretrain.pth), or 'none' for "
        "random initialisation.",
    )
    resolution: int = Field(
        448,
        ge=14,
        description="Shorter image side in pixels (the authors' --resolution; the paper "
        "reports 448 and 672). The image is then cut to a multiple of the patch size from "
        "its top-left corner, as theirs.",
    )
    resize: Literal["shorter_side", "stretch"] = Field(
        "shorter_side",
        description="shorter_side: bicubic resize of the shorter side, then the host's "
        "centre square (the authors keep the whole rectangle; on square images such as "
        "MVTec-AD's the pixels are theirs). stretch: both sides to resolution, which keeps "
        "the whole of a non-square image (VisA) at the cost of its aspect ratio.",
    )
    masking: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Zero-shot background masking of test patches by the first PCA "
        "component. auto: the authors' table (MVTec-AD capsule, hazelnut, pill, screw, "
        "toothbrush; every VisA category; any other category off).",
    )
    mask_references: bool = Field(
        False,
        description="Mask the reference images too where masking applies (the authors' "
        "--mask_ref_images, off by default: the memory bank keeps every patch).",
    )
    mask_threshold: float = Field(
        10.0, description="A patch is foreground when its first PCA component exceeds this."
    )
    mask_border: float = Field(
        0.2,
        ge=0.0,
        lt=0.5,
        description="Fraction cut from each side for the centre test that flips the "
        "component's sign when the centre is mostly background.",
    )
    mask_kernel: int = Field(
        3, ge=1, description="Odd kernel of the mask's dilation and closing (authors: 3)."
    )
    rotation: Literal["on", "off", "informed"] = Field(
        "on",
        description="Augment each reference with its rotations by 0, 45, ..., 315 degrees. "
        "on: every category (the authors' 'agnostic' default); informed: only hazelnut and "
        "screw (their 'informed' table); off: none.",
    )
    distance: Literal["cosine", "l2"] = Field(
        "cosine",
        description="cosine: 1 - cosine similarity (the paper; the authors' L2_normalized); "
        "l2: Euclidean (their L2: the square root of the mean squared distance to the "
        "num_neighbors nearest).",
    )
    num_neighbors: int = Field(1, ge=1, description="Nearest reference patches per patch.")
    top_fraction: float = Field(
        0.01,
        gt=0.0,
        le=1.0,
        description="Image score: mean of the highest int(N * top_fraction) of the N patch "
        "scores (the maximum when that is 0).",
    )
    smoothing_sigma: float = Field(
        4.0, ge=0.0, description="Gaussian sigma, in map pixels, on the upsampled patch map."
    )
    extract_chunk: int = Field(8, ge=1, description="Images per backbone forward pass.")
    search_chunk: int = Field(
        4096, ge=1, description="Query patches per nearest-neighbour block (bounds memory)."
    )

    @field_validator("masking", "rotation", mode="before")
    @classmethod
    def _yaml_switch(cls, value: object) -> object:
        # YAML reads a bare on/off (``--set model.masking=on``) as a boolean
        if isinstance(value, bool):
            return "on" if value else "off"
        return value

    @field_validator("mask_kernel")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError("mask_kernel must be odd so the kernel stays centred")
        return value

    def masks_category(self, category: str) -> bool:
        """Whether test patches of ``category`` are masked."""
        if self.masking == "auto":
            return category in MASKED_CATEGORIES
        return self.masking == "on"

    def rotates_category(self, category: str) -> bool:
        """Whether the references of ``category`` are augmented by rotation."""
        if self.rotation == "informed":
            return category in ROTATED_CATEGORIES
        return self.rotation == "on"

"""MuSc's settings, named as in the paper and the authors' ``configs/musc.yaml``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from adcore.api import QUICK_GELU_HELP, PluginConfig, QuickGelu

# The authors' RsCIN windows per data set (github xrli-U/MuSc, ``models/musc.py``):
# VisA [1, 8, 9], MVTec-AD and everything else [1, 2, 3]. ``rscin_k: auto`` picks by category.
VISA_CATEGORIES = frozenset(
    {"candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2"}
    | {"pcb1", "pcb2", "pcb3", "pcb4", "pipe_fryum"}
)
VISA_RSCIN_K = (1, 8, 9)
DEFAULT_RSCIN_K = (1, 2, 3)


class MuscConfig(PluginConfig):
    """Defaults are the paper's: open_clip ViT-L/14-336 (OpenAI) at 518 px, blocks 6/12/18/24,
    aggregation degrees 1, 3, 5, the lowest 30 % of the mutual scores."""

    backbone: str = Field("ViT-L-14-336", description="open_clip ViT architecture")
    pretrained: str = Field(
        "openai", description="open_clip tag, local checkpoint file, or 'none' (random)"
    )
    quick_gelu: QuickGelu = Field("auto", description=QUICK_GELU_HELP)
    resolution: int = Field(
        518, ge=1, description="input side; the patch grid is resolution // patch (518: 37)"
    )
    layers: list[int] = Field(
        [6, 12, 18, 24],
        description="ViT blocks (1-based) whose patch tokens are scored (the authors' "
        "feature_layers 5 11 17 23, counted from 0)",
    )
    aggregation_degrees: list[int] = Field(
        [1, 3, 5], description="LNAMD's r: patch tokens averaged over r x r neighbourhoods"
    )
    topmin_min: float = Field(
        0.0,
        ge=0,
        description="MSM interval average: lower end, a fraction of the other images when "
        "below 1, else a count (authors: 0)",
    )
    topmin_max: float = Field(
        0.3,
        gt=0,
        description="MSM interval average: upper end, a fraction of the other images when "
        "below 1, else a count (authors: 0.3)",
    )
    rscin_k: Literal["auto"] | list[int] = Field(
        "auto",
        description="RsCIN window sizes (k nearest images by class token, the image itself "
        "included); auto: the authors' [1, 8, 9] for VisA categories, [1, 2, 3] otherwise; "
        "a list holding 0 switches RsCIN off",
    )
    extract_chunk: int = Field(4, ge=1, description="images per backbone forward pass")
    score_chunk: int = Field(
        4,
        ge=1,
        description="images per side of one mutual-scoring block: its similarity matrix "
        "holds (score_chunk x patches)^2 floats (4 at 518 px: 120 MB)",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1 or len(set(value)) != len(value):
            raise ValueError("layers must be distinct block numbers counted from 1")
        return sorted(value)

    @field_validator("aggregation_degrees")
    @classmethod
    def _degrees(cls, value: list[int]) -> list[int]:
        if not value or any(r < 1 or r % 2 == 0 for r in value):
            raise ValueError("aggregation_degrees must be odd sizes such as 1, 3, 5")
        return value

    @field_validator("rscin_k", mode="before")
    @classmethod
    def _auto(cls, value: object) -> object:
        # the host reads one value for a list field as a one-item list: ['auto'] is 'auto'
        return "auto" if value == ["auto"] else value

    @field_validator("rscin_k")
    @classmethod
    def _windows(cls, value: Literal["auto"] | list[int]) -> Literal["auto"] | list[int]:
        if value != "auto" and (not value or min(value) < 0):
            raise ValueError("rscin_k must be 'auto' or a list of counts >= 0 ([0]: off)")
        return value

    def rscin_windows(self, category: str) -> tuple[int, ...]:
        """RsCIN's window sizes for ``category``; empty when RsCIN is off."""
        if self.rscin_k == "auto":
            return VISA_RSCIN_K if category in VISA_CATEGORIES else DEFAULT_RSCIN_K
        return () if 0 in self.rscin_k else tuple(self.rscin_k)

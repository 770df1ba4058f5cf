"""WinCLIP's settings: the paper's defaults, validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from adcore.api import QUICK_GELU_HELP, PluginConfig, QuickGelu


class WinClipConfig(PluginConfig):
    """Settings of WinCLIP; defaults are the paper's (ViT-B/16+ at 240 px, 2x2 and 3x3)."""

    backbone: str = Field("ViT-B-16-plus-240", description="open_clip ViT model name.")
    pretrained: str = Field(
        "laion400m_e31",
        description="open_clip pretrained tag, a local checkpoint file, or 'none' (random).",
    )
    quick_gelu: QuickGelu = Field("auto", description=QUICK_GELU_HELP)
    resolution: int = Field(240, ge=32, description="Input side in pixels.")
    scales: list[int] = Field(
        [2, 3], min_length=1, description="Window sides in patches (stride 1)."
    )
    prompt_average: Literal["normalized", "raw"] = Field(
        "normalized",
        description="How a state's prompt embeddings become its prototype: normalized "
        "(each embedding to unit length, then the mean; the paper's ensemble of unit-norm "
        "CLIP embeddings), or raw (the mean of the text encoder's raw outputs, as anomalib "
        "and the caoyunkang/WinClip reproduction (version V1) compute it). The prototype "
        "is normalised afterwards either way.",
    )
    temperature: float = Field(0.07, gt=0, description="Softmax temperature of the scores.")
    text_batch_size: int = Field(64, ge=1, description="Prompts per text-encoder pass.")
    window_batch_size: int = Field(
        2048, ge=1, description="Window sequences per transformer pass (bounds memory)."
    )

    @field_validator("scales")
    @classmethod
    def _distinct_positive(cls, value: list[int]) -> list[int]:
        if any(k < 1 for k in value) or len(set(value)) != len(value):
            raise ValueError("scales must be distinct window sides of at least 1 patch")
        return sorted(value)

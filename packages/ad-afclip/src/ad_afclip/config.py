"""AF-CLIP's and miniCLIP's settings: the authors' defaults, validated by pydantic."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from ad_afclip.tinyclip import TINYCLIP_8M
from adcore.api import QUICK_GELU_HELP, PluginConfig, QuickGelu


class SharedConfig(PluginConfig):
    """What AF-CLIP and miniCLIP share: a frozen open_clip ViT read at several blocks, the
    multi-scale aggregation, the 8 x 64-head adaptor and the trained parts' checkpoint."""

    backbone: str = Field("ViT-L-14-336", description="open_clip ViT architecture")
    pretrained: str = Field(
        "openai", description="open_clip tag, local checkpoint file, or 'none' (random)"
    )
    quick_gelu: QuickGelu = Field("auto", description=QUICK_GELU_HELP)
    resolution: int = Field(518, ge=16, description="input side (the grid is side // patch)")
    layers: list[int] = Field([6, 12, 18, 24], description="ViT blocks (1-based) to read")
    radii: list[int] = Field([1, 3, 5], description="aggregation neighbourhoods r x r")
    aggregation_sigma: float = Field(4.0, gt=0, description="Gaussian sigma of the r x r weights")
    adaptor_heads: int = Field(8, ge=1, description="adaptor attention heads of 64 (authors: 8)")
    checkpoint: str | None = Field(
        None,
        description="trained parts: a file or run folder of `ad train`, or the authors' "
        "released files (a file or their folder); none = untrained. --random-weights "
        "leaves it as given: a checkpoint trained on the same random backbone loads",
    )
    checkpoint_epoch: int | None = Field(
        None,
        ge=1,
        description="epoch to load when model.checkpoint is a folder with several "
        "(default: the latest)",
    )
    map_sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the upsampled map")
    epochs: int = Field(2, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = Field(8, ge=1)
    seed: int = 122
    lambda1: float = Field(1.0, ge=0, description="weight of the map loss")
    lambda2: float = Field(1.0, ge=0, description="weight of the patch alignment loss")
    focal_gamma: float = Field(4.0, ge=0)
    fidelity: Literal["authors_code", "paper"] = Field(
        "authors_code",
        description="authors_code: the released training's focal losses (p from a softmax "
        "of the two logits, the log through binary cross-entropy, clamped at -100: a normal "
        "element whose logit difference exceeds about 16.6 costs 100) and its map focal "
        "gradient (its alignment loss rewrites the mask targets in place before the "
        "backward pass); paper: the focal loss of the logit difference, log-sigmoid, and "
        "its own gradient. Detection is the same in both.",
    )

    @field_validator("layers")
    @classmethod
    def _layers(cls, value: list[int]) -> list[int]:
        if not value or min(value) < 1 or len(set(value)) != len(value):
            raise ValueError("layers must be distinct block numbers counted from 1")
        return sorted(value)

    @field_validator("radii")
    @classmethod
    def _radii(cls, value: list[int]) -> list[int]:
        if not value or any(r < 1 or r % 2 == 0 for r in value):
            raise ValueError("radii must be odd positive sizes such as 1, 3, 5")
        return value


class AFCLIPConfig(SharedConfig):
    """Defaults of the paper and the authors' code (ViT-L/14@336 at 518 px). On TinyCLIP set
    ``backbone: TinyCLIP-ViT-8M-16-Text-3M`` (and ``pretrained: yfcc15m``, layers 1..10)."""

    prompt_length: int = Field(12, ge=1, description="learned context tokens per prompt")
    fewshot_weight: float = Field(0.1, ge=0, description="final = memory + w x zero-shot")
    map_loss: Literal["l1", "dice"] = Field(
        "l1", description="second map loss next to focal (authors' code: l1)"
    )


class MiniCLIPConfig(SharedConfig):
    """af_tiny's ``train.sh``: TinyCLIP-ViT-8M/16 (YFCC15M) at 518 px, blocks 5/7/9/10,
    12 epochs of alternating textual and visual passes, lr 5e-4, lambda1 3, lambda2 1."""

    backbone: str = Field(TINYCLIP_8M, description="open_clip ViT architecture")
    pretrained: str = Field(
        "yfcc15m", description="TinyCLIP release tag, local checkpoint file, or 'none'"
    )
    layers: list[int] = Field([5, 7, 9, 10], description="ViT blocks (1-based) to read")
    epochs: int = Field(12, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    lambda1: float = Field(3.0, ge=0, description="weight of the map loss")
    keep_epochs: list[int] = Field(
        [6, 8, 10, 12], description="epochs whose checkpoint is kept, as af_tiny saves them"
    )

    @field_validator("layers")
    @classmethod
    def _two_class_layers(cls, value: list[int]) -> list[int]:
        if len(value) < 2:
            raise ValueError(
                "miniCLIP reads at least two blocks (the class token uses the last two)"
            )
        return sorted(value)

"""AF-CLIP and miniCLIP: method records and settings (no heavy imports here).

AF-CLIP (Fang, Lv, Su, ACM MM 2025, arXiv 2507.19949) trains a small adaptor and state
prompts on an auxiliary data set, then detects zero-shot (and few-shot with a memory bank)
on others. miniCLIP is the same recipe on TinyCLIP-ViT-8M/16, for edge devices.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator

from ad_afclip.tinyclip import TINYCLIP_8M
from adcore.api import QUICK_GELU_HELP, Capability, MethodSpec, PluginConfig, QuickGelu, hookimpl

if TYPE_CHECKING:
    from adcore.api import Runtime


class AFCLIPConfig(PluginConfig):
    """Defaults of the paper and the authors' code (ViT-L/14@336 at 518 px)."""

    backbone: str = Field("ViT-L-14-336", description="open_clip ViT architecture")
    pretrained: str = Field(
        "openai", description="open_clip tag, local checkpoint file, or 'none' (random)"
    )
    quick_gelu: QuickGelu = Field("auto", description=QUICK_GELU_HELP)
    resolution: int = Field(518, ge=16, description="input side; a multiple of the patch size")
    layers: list[int] = Field([6, 12, 18, 24], description="ViT blocks (1-based) to read")
    radii: list[int] = Field([1, 3, 5], description="aggregation neighbourhoods r x r")
    aggregation_sigma: float = Field(4.0, gt=0, description="Gaussian sigma of the r x r weights")
    prompt_length: int = Field(12, ge=1, description="learned context tokens per prompt")
    adaptor_heads: int | None = Field(
        None, ge=1, description="attention heads of 64; default width // 128 (8 on ViT-L)"
    )
    checkpoint: str | None = Field(
        None,
        description="trained prompts + adaptor written by `ad train`; none = untrained",
        json_schema_extra={"weights": True},
    )
    fewshot_weight: float = Field(0.1, ge=0, description="final = memory + w x zero-shot")
    map_sigma: float = Field(4.0, ge=0, description="Gaussian smoothing of the upsampled map")
    map_loss: Literal["l1", "dice"] = Field(
        "l1", description="second map loss next to focal (authors' code: l1)"
    )
    epochs: int = Field(2, ge=1)
    learning_rate: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.5, 0.999)
    batch_size: int = Field(8, ge=1)
    seed: int = 122
    lambda1: float = Field(1.0, ge=0, description="weight of the map loss")
    lambda2: float = Field(1.0, ge=0, description="weight of the patch alignment loss")
    focal_gamma: float = Field(4.0, ge=0)

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


class MiniCLIPConfig(AFCLIPConfig):
    """miniCLIP: TinyCLIP-ViT-8M/16 (YFCC15M); 512 px is the 32 x 32 grid of the authors'
    518 px without the pixels a 16 px patch cannot cover."""

    backbone: str = Field(TINYCLIP_8M, description="open_clip ViT architecture")
    pretrained: str = Field(
        "yfcc15m", description="TinyCLIP release tag, local checkpoint file, or 'none'"
    )
    resolution: int = Field(512, ge=16, description="input side; a multiple of the patch size")
    layers: list[int] = Field([5, 7, 9, 10], description="ViT blocks (1-based) to read")
    epochs: int = Field(12, ge=1)
    learning_rate: float = Field(5e-4, gt=0)
    lambda1: float = Field(3.0, ge=0, description="weight of the map loss")
    lambda2: float = Field(1.0, ge=0, description="weight of the patch alignment loss")


def build(config: AFCLIPConfig, runtime: Runtime) -> Any:
    """Factory: imports torch and open_clip only when a method is built."""
    from ad_afclip.method import AFCLIPMethod

    return AFCLIPMethod(config, runtime)


CAPABILITIES = frozenset({Capability.ZERO_SHOT, Capability.FEW_SHOT, Capability.TRAINABLE})


@hookimpl
def adcore_methods() -> list[MethodSpec]:
    return [
        MethodSpec(
            name="afclip",
            summary="AF-CLIP: CLIP with trained adaptor and state prompts (zero/few-shot)",
            config=AFCLIPConfig,
            factory=build,
            capabilities=CAPABILITIES,
            smoke_config={
                "backbone": "ViT-S-32-alt",
                "pretrained": "none",
                "resolution": 224,
                "layers": [3, 6, 9, 12],
            },
        ),
        MethodSpec(
            name="miniclip",
            summary="miniCLIP: AF-CLIP on TinyCLIP-ViT-8M/16, for edge devices",
            config=MiniCLIPConfig,
            factory=build,
            capabilities=CAPABILITIES,
            smoke_config={"pretrained": "none", "resolution": 224},
        ),
    ]

"""A third-party ad method, registered only through its ``adcore`` entry point."""

from pydantic import Field, field_validator

from adcore.api import Capability, MethodSpec, PluginConfig, hookimpl


class PixelGaussianConfig(PluginConfig):
    resolution: int = Field(128, ge=8, description="side the images are resized to")
    variance_floor: float = Field(1e-2, gt=0, description="added to each pixel's variance")
    blur: int = Field(5, ge=1, description="box-blur size of the map, odd (centred)")

    @field_validator("blur")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"blur must be odd so the map keeps its size, e.g. {value + 1}")
        return value


def build(config: PixelGaussianConfig, runtime):
    from ad_plugin_example.model import PixelGaussian  # torch only when used

    return PixelGaussian(config, runtime)


@hookimpl
def adcore_methods():
    return [
        MethodSpec(
            name="pixel-gaussian",
            summary="Per-pixel Gaussian of aligned normal images (weight-free)",
            config=PixelGaussianConfig,
            factory=build,
            capabilities={Capability.FEW_SHOT, Capability.FULL_SHOT, Capability.EXPORTABLE},
        )
    ]

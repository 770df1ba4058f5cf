"""A third-party ad method, registered only through its ``adcore`` entry point."""

from adcore.api import Capability, MethodSpec, PluginConfig, hookimpl


class PixelGaussianConfig(PluginConfig):
    resolution: int = 128
    variance_floor: float = 1e-2
    blur: int = 5


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
            capabilities={Capability.FEW_SHOT, Capability.FULL_SHOT},
        )
    ]

"""A third-party ad plugin, registered only through its ``adcore`` entry point: one small
example of each kind (a method, a data set, a metric, a reporter).

This module holds the records and the hooks; it imports nothing heavy, so ``ad
list-plugins`` stays fast. Each factory imports its implementation when it is used.
"""

from pydantic import Field, field_validator

from adcore.api import (
    Capability,
    DatasetSpec,
    MethodSpec,
    MetricSpec,
    PluginConfig,
    ReporterSpec,
    hookimpl,
)


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


def build_dataset(config: PluginConfig, root):
    from ad_plugin_example.dataset import FlatFolders

    return FlatFolders(root)


@hookimpl
def adcore_datasets():
    return [
        DatasetSpec(
            name="flat-folders",
            summary="<root>/<category>/{train,good,bad,masks}/ image folders",
            factory=build_dataset,
        )
    ]


class RecallAtFprConfig(PluginConfig):
    fpr: float = Field(0.05, ge=0, le=1, description="largest share of normal images flagged")


def build_metric(config: RecallAtFprConfig):
    from ad_plugin_example.metric import recall_at_fpr

    return lambda data: recall_at_fpr(data, config.fpr)


@hookimpl
def adcore_metrics():
    return [
        MetricSpec(
            name="image_recall_at_fpr",
            summary="share of anomalous images flagged at a 5 % false-positive rate",
            config=RecallAtFprConfig,
            factory=build_metric,
            level="image",
        )
    ]


class TopScoresConfig(PluginConfig):
    top: int = Field(5, ge=1, description="images listed per category")


def build_reporter(config: TopScoresConfig):
    from ad_plugin_example.reporter import TopScores

    return TopScores(config.top)


@hookimpl
def adcore_reporters():
    return [
        ReporterSpec(
            name="top-scores",
            summary="<category>/top_scores.csv and categories.txt (when chosen: --reporter)",
            config=TopScoresConfig,
            factory=build_reporter,
        )
    ]

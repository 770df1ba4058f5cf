"""The built-in metrics as records, registered by ``adcore.builtin`` like any plugin's.

Each factory returns a callable on :class:`adcore.metrics.evaldata.EvalData`; the metric modules
(numpy, scipy) load only when a factory runs.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import Field

from adcore.contracts.records import EmptyConfig, MetricSpec, PluginConfig
from adcore.metrics.evaldata import EvalData

MetricFn = Callable[[EvalData], float]


class ProConfig(PluginConfig):
    """AUPRO integrates the PRO curve up to this false positive rate (0.3 in MVTec AD)."""

    fpr_limit: float = Field(0.3, gt=0.0, le=1.0)


def _from_counts(level: str, statistic: str) -> Callable[[EmptyConfig], MetricFn]:
    """A metric read off the category's rank counts, which all metrics of a level share."""

    def factory(config: EmptyConfig) -> MetricFn:
        from adcore.metrics import ranking

        function = getattr(ranking, f"{statistic}_from_counts")
        return lambda data: function(getattr(data, f"{level}_counts"))

    return factory


def _pro(config: ProConfig) -> MetricFn:
    from adcore.metrics import aupro

    return lambda data: aupro(data.maps, data.masks, fpr_limit=config.fpr_limit)


def metric_specs() -> list[MetricSpec]:
    """image_auroc ... pro: exact, sort-based; NaN where a category lacks a class."""
    return [
        MetricSpec(
            name="image_auroc",
            summary="Image-level AUROC (ties half credit, as roc_auc_score).",
            level="image",
            factory=_from_counts("image", "auroc"),
        ),
        MetricSpec(
            name="image_ap",
            summary="Image-level average precision (as average_precision_score).",
            level="image",
            factory=_from_counts("image", "ap"),
        ),
        MetricSpec(
            name="image_f1_max",
            summary="Image-level F1 at the best threshold.",
            level="image",
            factory=_from_counts("image", "f1_max"),
        ),
        MetricSpec(
            name="pixel_auroc",
            summary="Pixel-level AUROC over all pixels of the category.",
            level="pixel",
            factory=_from_counts("pixel", "auroc"),
        ),
        MetricSpec(
            name="pixel_ap",
            summary="Pixel-level average precision over all pixels of the category.",
            level="pixel",
            factory=_from_counts("pixel", "ap"),
        ),
        MetricSpec(
            name="pixel_f1_max",
            summary="Pixel-level F1 at the best threshold.",
            level="pixel",
            factory=_from_counts("pixel", "f1_max"),
        ),
        MetricSpec(
            name="pro",
            summary="AUPRO up to FPR 0.3, normalised, as the official MVTec AD evaluation.",
            config=ProConfig,
            level="pixel",
            factory=_pro,
        ),
    ]

"""The host's own components, registered through the ``adcore`` entry point."""

from __future__ import annotations

from adcore.contracts.hookspecs import hookimpl
from adcore.contracts.records import MetricSpec, ReporterSpec
from adcore.metrics.specs import metric_specs


def _reporter(class_name: str):
    def build(_config: object):
        from adcore.outputs.reporters import summary

        return getattr(summary, class_name)()

    return build


def _overlay_reporter(_config: object):
    from adcore.outputs.reporters.overlay import OverlayReporter

    return OverlayReporter()


@hookimpl
def adcore_metrics() -> list[MetricSpec]:
    return metric_specs()


@hookimpl
def adcore_reporters() -> list[ReporterSpec]:
    return [
        ReporterSpec(
            name="summary-csv",
            summary="summary_metrics.csv, full precision",
            factory=_reporter("SummaryCsvReporter"),
            default=True,
        ),
        ReporterSpec(
            name="summary-pretty",
            summary="summary_metrics_pretty.csv and .md, percent",
            factory=_reporter("PrettySummaryReporter"),
            default=True,
        ),
        ReporterSpec(
            name="summary-json",
            summary="summary.json with the environment",
            factory=_reporter("JsonSummaryReporter"),
            default=True,
        ),
        ReporterSpec(
            name="overlays",
            summary="<category>/overlays/*.png heatmaps (when visualization.save_overlay)",
            factory=_overlay_reporter,
            default=True,
        ),
    ]

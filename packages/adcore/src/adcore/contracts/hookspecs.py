"""The hooks a plugin implements. Each yields typed records from :mod:`adcore.contracts.records`.

Hooks only gain arguments over time (pluggy lets an implementation take fewer), so a plugin
written against an older ``adcore`` keeps working.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from adcore.contracts.records import DatasetSpec, MethodSpec, MetricSpec, ReporterSpec

PROJECT = "adcore"
ENTRY_POINT_GROUP = "adcore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def adcore_methods() -> Iterable[MethodSpec]:
    """Anomaly detection methods, e.g. PatchCore or WinCLIP."""


@hookspec
def adcore_datasets() -> Iterable[DatasetSpec]:
    """Data sets: readers of an on-disk layout that list samples without decoding them."""


@hookspec
def adcore_metrics() -> Iterable[MetricSpec]:
    """Metrics computed per category from image scores and anomaly maps."""


@hookspec
def adcore_reporters() -> Iterable[ReporterSpec]:
    """Writers of result files, per category and per run."""

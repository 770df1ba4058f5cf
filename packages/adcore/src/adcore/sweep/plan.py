"""From grid points to resolved experiments and units, refusing bad points before any work.

Every point's config is resolved and its data set listed on the driver, so a typo in one
corner of the grid stops the sweep at once, naming the point, instead of hours later on a
worker. A unit is finished when its run folder holds the same config fingerprint and the
category's ``metrics.csv``: exactly what ``ad eval`` resumes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore.config.problems import validate_base
from adcore.config.resolve import resolve
from adcore.config.sections import ResolvedConfig, weights_fields
from adcore.infra.errors import AdError, ConfigError
from adcore.outputs.results import RunLayout, refuse_other_config
from adcore.plugins.registry import Registry
from adcore.run.components import build_dataset, check_capability, select_categories
from adcore.sweep.spec import Sweep, describe_point, merge_dotted
from adcore.sweep.unit import Unit
from adcore.toolkit.weights import RANDOM


@dataclass
class Experiment:
    """One grid point: its config, its run folder and its categories."""

    point: dict[str, Any]
    raw: dict[str, Any]
    config: ResolvedConfig
    layout: RunLayout
    categories: list[str]
    pending: list[str] = field(default_factory=list)


@dataclass
class Plan:
    experiments: list[Experiment]
    units: list[Unit]  # the pending ones, in grid order

    @property
    def total_units(self) -> int:
        return sum(len(e.categories) for e in self.experiments)

    @property
    def output_root(self) -> Path:
        return self.experiments[0].config.base.experiment.output_root


def absolute_paths(raw: dict[str, Any]) -> dict[str, Any]:
    """Paths made absolute on the driver: workers do not share its working directory."""
    base = validate_base(raw)
    paths = {"experiment.output_root": base.experiment.output_root, "data.root": base.data.root}
    found = {k: str(v.expanduser().resolve()) for k, v in paths.items() if v is not None}
    return merge_dotted(raw, found)


def _fail(point: dict[str, Any], error: AdError) -> AdError:
    return type(error)(f"Sweep point {describe_point(point)}: {error.problem}", error.hint)


def _resolve_point(
    sweep: Sweep,
    point: dict[str, Any],
    registry: Registry,
    random_weights: bool,
    datasets: dict[str, Any],
) -> tuple[dict[str, Any], ResolvedConfig, list[str]]:
    """A point's raw config, resolved config and categories; ``datasets`` caches the data
    sets already built (points often share one)."""
    try:
        raw = absolute_paths(sweep.raw_config(point))
        config = resolve(validate_base(raw), registry, random_weights)
        if random_weights:
            fields = weights_fields(config.method_config)
            raw = merge_dotted(raw, {f"model.{name}": RANDOM for name in fields})
        check_capability(config)
        data = config.dataset_config.model_dump(mode="json")
        key = json.dumps([config.dataset.qualified_name, data, str(config.base.data.root)])
        if key not in datasets:
            datasets[key] = build_dataset(
                config.dataset, config.dataset_config, config.base.data.root
            )
        categories = select_categories(datasets[key], config.base.data.categories)
    except AdError as error:
        raise _fail(point, error) from None
    return raw, config, categories


def plan_sweep(
    sweep: Sweep,
    registry: Registry,
    overwrite: bool = False,
    fail_once: str | None = None,
    random_weights: bool = False,
) -> Plan:
    """Every point's experiment and its pending units; ``random_weights`` writes ``none``
    into each method's weights fields, so workers resolve the same config."""
    experiments: list[Experiment] = []
    datasets: dict[str, Any] = {}
    folders: dict[Path, dict[str, Any]] = {}
    for point in sweep.points():
        raw, config, categories = _resolve_point(sweep, point, registry, random_weights, datasets)
        base = config.base
        layout = RunLayout(
            base.experiment.output_root,
            config.dataset.spec.name,
            config.method.spec.name,
            base.experiment.name,
        )
        if layout.root in folders:
            raise ConfigError(
                f"Sweep points {describe_point(folders[layout.root])} and "
                f"{describe_point(point)} would share the run folder {layout.root}.",
                "Remove the repeated axis value, or add the key that tells them apart to axes.",
            )
        folders[layout.root] = point
        try:
            resuming = refuse_other_config(
                layout, config.fingerprint(), overwrite, config.to_dict()
            )
        except AdError as error:
            raise _fail(point, error) from None
        done = resuming and not overwrite
        pending = [c for c in categories if not (done and layout.metrics(c).exists())]
        experiments.append(Experiment(point, raw, config, layout, categories, pending))
    units = [
        Unit(
            raw=e.raw,
            category=category,
            label=f"{e.layout.root.relative_to(e.config.base.experiment.output_root)}/{category}",
            overwrite=overwrite,
            fail_once=fail_once,
        )
        for e in experiments
        for category in e.pending
    ]
    return Plan(experiments, units)

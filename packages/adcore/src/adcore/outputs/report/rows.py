"""The rows of ``ad report``: one run as the report reads it, one compared row, their formats.

Shared by the Markdown/CSV writer (:mod:`adcore.outputs.report.compare`) and the HTML page
(:mod:`adcore.outputs.report.html`), so neither imports the other's module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore.outputs.results import EFFICIENCY_COLUMNS, LOWER_IS_BETTER

EFFICIENCY_NAMES = frozenset(EFFICIENCY_COLUMNS)


@dataclass
class RunSummary:
    """One run folder as the report sees it."""

    run_dir: Path
    method: str
    dataset: str
    experiment: str
    k_shot: str
    seed: int
    random_weights: bool
    metric_names: list[str]
    efficiency_names: list[str]
    values: dict[str, dict[str, float]]  # category (and "mean") -> column -> value
    label: str = ""
    machine: str = ""  # CPU, threads, load (and GPU) when the run was made
    extra: dict[str, Any] = field(default_factory=dict)
    untrained_parameters: bool = False  # trained parts without a trained checkpoint

    @property
    def categories(self) -> list[str]:
        return [c for c in self.values if c != "mean"]


def parse_number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def higher_is_better(name: str) -> bool:
    if name in EFFICIENCY_NAMES:
        return name not in LOWER_IS_BETTER
    try:
        from adcore.plugins.registry import get_registry

        return bool(get_registry().resolve("metric", name).spec.higher_is_better)
    except Exception:  # a metric from a plugin no longer installed: the usual convention
        return True


@dataclass
class Row:
    """One table row: a metric on one category (or the mean) across runs."""

    metric: str
    dataset: str
    category: str
    values: list[float]  # one per run, NaN where the run lacks it
    best: list[int]  # indices of the best runs


def best_of(values: list[float], higher: bool) -> list[int]:
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return []
    target = max(present) if higher else min(present)
    return [i for i, v in enumerate(values) if v == target]


def shown_best(row: Row, formatter: Any) -> list[int]:
    """Best runs as displayed: values equal after rounding are marked alike."""
    return best_of([parse_number(formatter(v)) for v in row.values], higher_is_better(row.metric))


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def figure(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def place_name(row: Row, many_datasets: bool) -> str:
    return f"{row.dataset}/{row.category}" if many_datasets else row.category

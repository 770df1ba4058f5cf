"""The rows of ``ad report``: one run as the report reads it, one compared row, their formats.

Shared by the Markdown/CSV writer (:mod:`adcore.outputs.report.compare`) and the HTML page
(:mod:`adcore.outputs.report.html`), so neither imports the other's module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore.outputs.results import BOOKKEEPING_COLUMNS, EFFICIENCY_COLUMNS, LOWER_IS_BETTER

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
    note: str = ""  # a mean row: over which categories, when the runs' sets differ


def mean_row(name: str, dataset: str, runs: list[RunSummary], column: list[int]) -> Row:
    """Each run's mean of ``name`` over the categories every run of ``dataset`` has.

    ``column``: the indices of the runs of ``dataset`` (the others get NaN). Runs over the
    same categories keep their own mean; different sets are compared over the shared
    categories only, and not at all (no best) when they share none. Bookkeeping columns
    are never ranked.
    """
    members = [runs[i] for i in column]
    shared = [c for c in members[0].categories if all(c in r.categories for r in members)]
    values = [math.nan] * len(runs)
    note = ""
    if all(set(r.categories) == set(shared) for r in members):
        for i in column:
            values[i] = runs[i].values.get("mean", {}).get(name, math.nan)
    elif shared:
        for i in column:
            per_category = [runs[i].values[c].get(name, math.nan) for c in shared]
            values[i] = math.fsum(per_category) / len(per_category)
        note = f"over the {len(shared)} categories all runs have: {', '.join(shared)}"
    else:
        for i in column:
            values[i] = runs[i].values.get("mean", {}).get(name, math.nan)
        note = "each run's own categories, which differ: not compared"
    ranked = not note.endswith("not compared") and name not in BOOKKEEPING_COLUMNS
    best = best_of(values, higher_is_better(name)) if ranked else []
    return Row(name, dataset, "mean", values, best, note)


def best_of(values: list[float], higher: bool) -> list[int]:
    present = [v for v in values if not math.isnan(v)]
    if not present:
        return []
    target = max(present) if higher else min(present)
    return [i for i, v in enumerate(values) if v == target]


def shown_best(row: Row, formatter: Any) -> list[int]:
    """Best runs as displayed: values equal after rounding are marked alike."""
    if not row.best:  # not ranked (bookkeeping, or means over different categories)
        return []
    return best_of([parse_number(formatter(v)) for v in row.values], higher_is_better(row.metric))


def percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def figure(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.4g}"


def place_name(row: Row, many_datasets: bool) -> str:
    name = f"{row.dataset}/{row.category}" if many_datasets else row.category
    return f"{name} ({row.note})" if row.note else name


def figure_name(row: Row) -> str:
    """An efficiency row's name with its direction (or that it is bookkeeping) and note."""
    name = row.metric
    if name in BOOKKEEPING_COLUMNS:
        name += " (how it was measured, not ranked)"
    else:
        name += f" ({'lower' if name in LOWER_IS_BETTER else 'higher'} is better)"
    return f"{name}, {row.note}" if row.note else name


def differing_categories(runs: list[RunSummary]) -> str:
    """A plain sentence when runs of one data set cover different categories, else ''."""
    sentences = []
    for dataset in dict.fromkeys(run.dataset for run in runs):
        members = [run for run in runs if run.dataset == dataset]
        if len({frozenset(run.categories) for run in members}) > 1:
            counts = ", ".join(f"{run.label}: {len(run.categories)}" for run in members)
            sentences.append(
                f"The runs on {dataset} cover different categories ({counts}): their means "
                "are compared over the categories all of them have, and not ranked where "
                "they share none."
            )
    return " ".join(sentences)

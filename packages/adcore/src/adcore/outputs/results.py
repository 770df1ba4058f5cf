"""The results layout and its typed records; every file is written atomically.

``results/<dataset>/<method>/<experiment>/`` holds ``config.yaml``, ``env.json``, the run
summaries, and one folder per category with ``metrics.csv`` and ``scores.csv``. A category
whose ``metrics.csv`` exists under the same config is finished; resume reads it back."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import BaseModel, Field

from adcore.contracts.dataset import Sample
from adcore.infra.errors import Interrupted, OutputError
from adcore.infra.files import atomic_write_text, csv_text

if TYPE_CHECKING:
    from adcore.config.sections import ResolvedConfig


COUNT_COLUMNS = ("num_support", "num_test", "num_anomalous", "num_skipped", "num_vanished_masks")
# the figures written to each category's metrics.csv; all but throughput are better lower
EFFICIENCY_COLUMNS = (
    "latency_ms_median",
    "latency_ms_p90",
    "batch_ms_per_image",
    "throughput_ips",
    "peak_memory_mb",
    "params_total",
    "memory_bank_mb",
    "gflops",
    "latency_probe_iters",
    "efficiency_seconds",
)
# how the figures were obtained, not results: never ranked
BOOKKEEPING_COLUMNS = frozenset({"latency_probe_iters", "efficiency_seconds"})
LOWER_IS_BETTER = frozenset(EFFICIENCY_COLUMNS) - {"throughput_ips"} - BOOKKEEPING_COLUMNS
SUMMARY_FILES = (
    "summary_metrics.csv",
    "summary_metrics_pretty.csv",
    "summary_metrics_pretty.md",
    "summary.json",
)


NOTES_COLUMN, NOTES_SEPARATOR = "notes", "; "  # metrics.csv: why metrics are n/a


class CategoryResult(BaseModel):
    """One finished unit of work: a category's metrics, efficiency figures and counts."""

    category: str
    metrics: dict[str, float]
    efficiency: dict[str, float] = Field(default_factory=dict)
    num_support: int = 0
    num_test: int = 0
    num_anomalous: int = 0
    num_skipped: int = 0
    num_vanished_masks: int = 0  # anomalous images whose mask lost every pixel when resized
    seconds: float = 0.0
    resumed: bool = False
    notes: list[str] = Field(default_factory=list)  # why a metric is n/a, what was lost

    def line(self, metric_names: Sequence[str]) -> str:
        """``fabric: image_auroc 86.1, pro 62.1 (12.3 s)``: the console line of a category."""
        shown = ", ".join(f"{n} {100 * self.metrics[n]:.1f}" for n in metric_names)
        return f"{self.category}: {shown} ({self.seconds:.1f} s)"

    def row(self) -> dict[str, Any]:
        counts = {name: getattr(self, name) for name in COUNT_COLUMNS}
        return {
            "category": self.category,
            **self.metrics,
            **self.efficiency,
            **counts,
            "seconds": round(self.seconds, 3),
            "notes": NOTES_SEPARATOR.join(self.notes),
        }


class RunResult(BaseModel):
    """All categories of a run plus their macro average."""

    run_dir: Path
    dataset: str
    method: str
    experiment: str
    metric_names: list[str]
    categories: list[CategoryResult]
    random_weights: bool = False  # a randomly initialised backbone
    untrained_parameters: bool = False  # trained parts without a trained checkpoint

    def mean(self) -> dict[str, float]:
        """Macro average over categories of every metric and efficiency figure."""
        columns: dict[str, list[float]] = {}
        for result in self.categories:
            for name, value in {**result.metrics, **result.efficiency}.items():
                columns.setdefault(name, []).append(value)
        # a NaN (e.g. AUROC of a category without anomalies) makes the mean NaN, visibly
        return {name: math.fsum(values) / len(values) for name, values in columns.items()}


class RunLayout:
    """Paths of one run's folder."""

    def __init__(self, output_root: Path, dataset: str, method: str, experiment: str) -> None:
        self.root = output_root / dataset.replace(":", "_") / method.replace(":", "_") / experiment

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def env(self) -> Path:
        return self.root / "env.json"

    def category(self, name: str) -> Path:
        return self.root / name

    def metrics(self, category: str) -> Path:
        return self.category(category) / "metrics.csv"

    def scores(self, category: str) -> Path:
        return self.category(category) / "scores.csv"

    def map_path(self, category: str, key: str) -> Path:
        """``<category>/maps/<key>.tiff``; ``key`` from
        :func:`adcore.outputs.outputkeys.output_keys`."""
        return self.category(category) / "maps" / f"{key}.tiff"

    def model_state(self, category: str) -> Path:
        return self.category(category) / "model.pt"

    def inventory(self, category: str) -> Path:
        """``<category>/inventory.csv``: every file of the category, used or ignored."""
        return self.category(category) / "inventory.csv"

    def interrupted(self, categories: list[str]) -> Interrupted:
        """What Ctrl-C left behind: finished categories are kept on disk, and a rerun resumes."""
        done = [c for c in categories if self.metrics(c).exists()]
        left = [c for c in categories if c not in done]
        kept = (
            f"Finished and kept in {self.root}: {', '.join(done)}."
            if done
            else f"No category had finished; nothing was kept in {self.root}."
        )
        return Interrupted(
            f"Interrupted. {kept} Not finished: {', '.join(left) or 'none'}.",
            "Rerun the same command to resume: finished categories are kept, the others computed.",
        )

    def write_run_files(self, config: ResolvedConfig, env: dict[str, Any]) -> None:
        """``config.yaml`` (resolved), ``env.json`` and the config's fingerprint."""
        atomic_write_text(self.config, yaml.safe_dump(config.to_dict(), sort_keys=False))
        atomic_write_text(self.env, json.dumps(env, indent=2, default=str) + "\n")
        atomic_write_text(self.root / ".fingerprint", config.fingerprint() + "\n")

    def forget_results(self, categories: Iterable[str]) -> None:
        """Before ``--overwrite`` writes a new config: remove what marks results as finished
        (each category's ``metrics.csv``, the run summaries), so that an interrupted
        overwrite never leaves old results under the new config to be resumed as its own."""
        marks = [self.metrics(c) for c in categories]
        marks += [self.root / n for n in SUMMARY_FILES]
        for path in marks:
            path.unlink(missing_ok=True)


def write_category(layout: RunLayout, result: CategoryResult, metric_names: Sequence[str]) -> None:
    """``metrics.csv``: one row of metrics, efficiency figures and counts."""
    row = result.row()
    header = [
        "category",
        *metric_names,
        *result.efficiency,
        *COUNT_COLUMNS,
        "seconds",
        NOTES_COLUMN,
    ]
    atomic_write_text(layout.metrics(result.category), csv_text(header, [[row[h] for h in header]]))


def write_scores(
    layout: RunLayout, category: str, samples: Sequence[Sample], scores: Sequence[float]
) -> None:
    """``scores.csv``: one row per test image."""
    rows = [
        [str(s.image_path), s.label, s.defect_type, repr(float(score))]
        for s, score in zip(samples, scores, strict=True)
    ]
    atomic_write_text(
        layout.scores(category), csv_text(["path", "label", "defect_type", "score"], rows)
    )


def read_category(layout: RunLayout, category: str, metric_names: Sequence[str]) -> CategoryResult:
    """Read back a finished category's ``metrics.csv``."""
    with layout.metrics(category).open(newline="") as stream:
        row = next(csv.DictReader(stream))
    metrics = {name: float(row[name]) for name in metric_names if name in row}
    known = {"category", "seconds", "notes", *COUNT_COLUMNS, *metric_names}
    efficiency = {k: float(v) for k, v in row.items() if k not in known and v != ""}
    counts = {name: int(row.get(name, 0) or 0) for name in COUNT_COLUMNS}
    notes = [n for n in (row.get("notes") or "").split(NOTES_SEPARATOR) if n]
    return CategoryResult(
        category=category,
        metrics=metrics,
        efficiency=efficiency,
        seconds=float(row.get("seconds", 0) or 0),
        resumed=True,
        notes=notes,
        **counts,
    )


def differing_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested mappings (missing counts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        keys = sorted({*old, *new}, key=str)
        found = []
        for key in keys:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            found += differing_keys(old.get(key), new.get(key), dotted)
        return found
    return [] if old == new else [prefix]


# not in the fingerprint: they change where and which files are written, not the results
RUNTIME_ONLY_KEYS = ("data.num_workers", "experiment.output_root", "evaluation.reporters")


def refuse_other_config(
    layout: RunLayout, fingerprint: str, overwrite: bool, config: dict[str, Any] | None = None
) -> bool:
    """True when the folder holds this same config (resume); an error for another config,
    naming the keys that differ when ``config`` (the new resolved config) is given."""
    marker = layout.root / ".fingerprint"
    if not marker.exists():
        return False
    found = marker.read_text().strip()
    finished_any = any(layout.root.glob("*/metrics.csv"))
    if found == fingerprint or overwrite or not finished_any:
        return found == fingerprint
    differences = ""
    if config is not None and layout.config.is_file():
        import yaml

        old = yaml.safe_load(layout.config.read_text()) or {}
        keys = [k for k in differing_keys(old, config) if k not in RUNTIME_ONLY_KEYS]
        if keys:
            shown = "; ".join(f"{k}: {_dotted(old, k)!r} -> {_dotted(config, k)!r}" for k in keys)
            differences = f" Differing keys: {shown}."
    raise OutputError(
        f"{layout.root} already holds results of a different config (see its config.yaml)."
        + differences,
        "Use another experiment.name (or --output), or rerun with --overwrite to replace them.",
    )


def _dotted(tree: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        tree = tree.get(part) if isinstance(tree, dict) else None
    return tree


def run_result(
    config: ResolvedConfig, layout: RunLayout, results: list[CategoryResult], env: dict[str, Any]
) -> RunResult:
    """A run's categories as one result; ``env.json`` knows whether any weights were random."""
    return RunResult(
        run_dir=layout.root,
        dataset=config.dataset.spec.name,
        method=config.method.spec.name,
        experiment=config.base.experiment.name,
        metric_names=config.metric_names,
        categories=results,
        random_weights=bool(env.get("random_weights", config.random_weights)),
        untrained_parameters=bool(env.get("untrained_parameters", False)),
    )

"""``ad report``: several runs side by side.

Reads finished result folders (any methods, data sets and shot settings) and writes
``report.md`` and ``report.csv`` (each metric per category and the mean, runs as columns,
the best value of each row marked), a bar chart per metric, an efficiency chart (accuracy
against latency, marker area from the parameter count) and one self-contained
``report.html``. A run with randomly initialised weights carries "(random weights)" in its
name wherever it appears.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from adcore.infra.errors import DataError
from adcore.infra.files import atomic_write_bytes, atomic_write_text, csv_text
from adcore.outputs.env import machine_summary
from adcore.outputs.report.html import report_html
from adcore.outputs.report.rows import (
    EFFICIENCY_NAMES,
    Row,
    RunSummary,
    best_of,
    differing_categories,
    figure,
    figure_name,
    higher_is_better,
    mean_row,
    parse_number,
    percent,
    place_name,
    shown_best,
)
from adcore.outputs.results import BOOKKEEPING_COLUMNS

RANDOM_TAG = "(random weights)"
ACCURACY_PREFERENCE = ("image_auroc", "pixel_auroc", "pro")


def read_run(run_dir: Path) -> RunSummary:
    """A finished run's summary, config, environment (random weights) and metric names."""
    summary_csv = run_dir / "summary_metrics.csv"
    if not summary_csv.is_file():
        raise DataError(
            f"{run_dir} holds no summary_metrics.csv, so it is not a finished run.",
            "Pass folders written by ad eval (results/<dataset>/<method>/<experiment>), "
            "after the run has finished.",
        )
    with summary_csv.open(newline="") as stream:
        reader = csv.DictReader(stream)
        header = [h for h in reader.fieldnames or [] if h not in ("category", "notes")]
        values = {row["category"]: {h: parse_number(row[h]) for h in header} for row in reader}
    config = _yaml(run_dir / "config.yaml")
    env = _json(run_dir / "env.json")
    summary = _json(run_dir / "summary.json")
    metric_names = summary.get("metric_names") or [h for h in header if h not in EFFICIENCY_NAMES]
    return RunSummary(
        run_dir=run_dir,
        method=str(config.get("model", {}).get("name", summary.get("method", run_dir.parent.name))),
        dataset=str(
            config.get("data", {}).get(
                "dataset", summary.get("dataset", run_dir.parent.parent.name)
            )
        ),
        experiment=str(config.get("experiment", {}).get("name", run_dir.name)),
        k_shot=str(config.get("data", {}).get("k_shot", "?")),
        seed=int(config.get("experiment", {}).get("seed", 0)),
        random_weights=bool(env.get("random_weights", summary.get("random_weights", False))),
        metric_names=[m for m in metric_names if m in header],
        efficiency_names=[h for h in header if h not in metric_names],
        values=values,
        machine=machine_summary(env),
        untrained_parameters=bool(env.get("untrained_parameters", False)),
    )


def _yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def label_runs(runs: list[RunSummary]) -> None:
    """Short unique column names: method and shots, then only what tells clashing runs apart."""
    for run in runs:
        run.label = f"{run.method} k={run.k_shot}"
    extras = (lambda r: r.dataset, lambda r: r.experiment, lambda r: f"seed {r.seed}")
    for extra in extras:
        groups: dict[tuple[str, bool], list[RunSummary]] = {}
        for run in runs:
            groups.setdefault((run.label, run.random_weights), []).append(run)
        for group in groups.values():
            if len(group) > 1 and len({extra(r) for r in group}) > 1:
                for run in group:
                    run.label = f"{run.label} {extra(run)}"
    seen: dict[tuple[str, bool], int] = {}
    for run in runs:
        key = (run.label, run.random_weights)
        seen[key] = seen.get(key, 0) + 1
        if seen[key] > 1:
            run.label = f"{run.label} #{seen[key]}"
    for run in runs:
        if run.random_weights:
            run.label = f"{run.label} {RANDOM_TAG}"


def comparison_rows(runs: list[RunSummary]) -> list[Row]:
    """Every metric, on every (data set, category) any run has, then each data set's mean
    (over the categories its runs share: :func:`mean_row`)."""
    metrics = list(dict.fromkeys(m for run in runs for m in run.metric_names))
    places = list(dict.fromkeys((run.dataset, c) for run in runs for c in run.categories))
    datasets = list(dict.fromkeys(run.dataset for run in runs))
    rows = []
    for metric in metrics:
        higher = higher_is_better(metric)
        for dataset, category in places:
            values = [
                run.values.get(category, {}).get(metric, math.nan)
                if run.dataset == dataset
                else math.nan
                for run in runs
            ]
            if not all(math.isnan(v) for v in values):
                rows.append(Row(metric, dataset, category, values, best_of(values, higher)))
        for dataset in datasets:
            column = [i for i, run in enumerate(runs) if run.dataset == dataset]
            row = mean_row(metric, dataset, runs, column)
            if not all(math.isnan(v) for v in row.values):
                rows.append(row)
    return rows


def efficiency_rows(runs: list[RunSummary]) -> list[Row]:
    """Each efficiency figure's mean over categories, per run (over the shared categories
    when every run is on one data set); bookkeeping figures are shown, not ranked."""
    names = list(dict.fromkeys(n for run in runs for n in run.efficiency_names))
    one_dataset = len({run.dataset for run in runs}) == 1
    rows = []
    for name in names:
        if one_dataset:
            row = mean_row(name, runs[0].dataset, runs, list(range(len(runs))))
        else:
            values = [run.values.get("mean", {}).get(name, math.nan) for run in runs]
            ranked = name not in BOOKKEEPING_COLUMNS
            row = Row(name, "", "mean", values, best_of(values, higher_is_better(name)) * ranked)
        if not all(math.isnan(v) for v in row.values):
            rows.append(row)
    return rows


def report_csv(runs: list[RunSummary], rows: list[Row], efficiency: list[Row]) -> str:
    header = ["metric", "dataset", "category", *(r.label for r in runs), "best", "note"]
    lines = [
        [
            row.metric,
            row.dataset,
            row.category,
            *("" if math.isnan(v) else repr(v) for v in row.values),
            "; ".join(runs[i].label for i in row.best),
            row.note,
        ]
        for row in [*rows, *efficiency]
    ]
    return csv_text(header, lines)


def markdown_table(header: list[str], rows: list[Row], names: list[str], formatter: Any) -> str:
    text = "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n"
    for name, row in zip(names, rows, strict=True):
        best = shown_best(row, formatter)
        cells = [
            f"**{formatter(v)}**" if i in best else formatter(v) for i, v in enumerate(row.values)
        ]
        text += "| " + " | ".join([name, *cells]) + " |\n"
    return text


def report_markdown(
    runs: list[RunSummary], rows: list[Row], efficiency: list[Row], charts: list[Path]
) -> str:
    many = len({run.dataset for run in runs}) > 1
    labels = [run.label for run in runs]
    parts = ["# Comparison of anomaly detection runs\n\n"]
    if any(run.random_weights for run in runs):
        parts.append(
            f"> Runs marked {RANDOM_TAG} used randomly initialised models: their numbers show "
            "the pipeline working, not the method's accuracy.\n\n"
        )
    if any(run.untrained_parameters for run in runs):
        parts.append(
            "> Runs marked *untrained parameters* ran without a trained checkpoint of the "
            "method's prompts and adaptor.\n\n"
        )
    parts.append("## Runs\n\n")
    parts.append("| run | method | data set | k-shot | seed | weights | machine | folder |\n")
    parts.append("|---|---|---|---|---|---|---|---|\n")
    for run in runs:
        weights = "**random**" if run.random_weights else "as configured"
        weights += ", *untrained parameters*" if run.untrained_parameters else ""
        parts.append(
            f"| {run.label} | {run.method} | {run.dataset} | {run.k_shot} | {run.seed} | "
            f"{weights} | {run.machine} | `{run.run_dir}` |\n"
        )
    parts.append("\nMetrics in percent; the best value of each row in **bold**.\n")
    differing = differing_categories(runs)
    if differing:
        parts.append(f"\n> {differing}\n")
    for metric in dict.fromkeys(row.metric for row in rows):
        chosen = [row for row in rows if row.metric == metric]
        direction = "higher is better" if higher_is_better(metric) else "lower is better"
        parts.append(f"\n## {metric} ({direction})\n\n")
        names = [place_name(row, many) for row in chosen]
        parts.append(markdown_table(["category", *labels], chosen, names, percent))
    if efficiency:
        parts.append("\n## Efficiency (mean over categories)\n\n")
        parts.append(
            "Times depend on the machine and its load when each run was made (the machine "
            "column of Runs): compare them only between runs on the same machine and load.\n\n"
        )
        names = [figure_name(row) for row in efficiency]
        parts.append(markdown_table(["figure", *labels], efficiency, names, figure))
    parts.append("\n## Charts\n\n")
    parts += [f"![{chart.stem}](charts/{chart.name})\n" for chart in charts]
    return "".join(parts)


# --- charts ---------------------------------------------------------------------------------


def _png(figure_: Any) -> bytes:
    buffer = io.BytesIO()
    figure_.savefig(buffer, format="png")
    return buffer.getvalue()


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    result = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(result)
    return result


def metric_chart(metric: str, runs: list[RunSummary], rows: list[Row]) -> bytes:
    """Grouped bars: categories (and the mean) along x, one bar per run; random runs hatched."""
    import numpy as np
    from matplotlib import colormaps

    chosen = [row for row in rows if row.metric == metric]
    many = len({run.dataset for run in runs}) > 1
    names = [place_name(row, many) for row in chosen]
    width = min(0.8 / len(runs), 0.35)
    fig = _new_figure(max(6.0, 0.9 * len(chosen) * max(1, len(runs) / 2) + 2), 4.2)
    axes = fig.subplots()
    positions = np.arange(len(chosen))
    colours = colormaps["tab10"]
    for j, run in enumerate(runs):
        heights = [100 * row.values[j] for row in chosen]  # NaN bars are not drawn
        bars = axes.bar(
            positions + (j - (len(runs) - 1) / 2) * width,
            heights,
            width,
            label=run.label,
            color=colours(j % 10),
            hatch="//" if run.random_weights else None,
            edgecolor="white" if run.random_weights else None,
        )
        if len(chosen) * len(runs) <= 48:
            axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    if len(chosen) > 1 and chosen[-1].category == "mean":
        axes.axvline(len(chosen) - 1.5, color="grey", lw=1, ls="--")
    rotate = len(chosen) > 6
    axes.set_xticks(
        positions, names, rotation=30 if rotate else 0, ha="right" if rotate else "center"
    )
    axes.set_ylabel(f"{metric} (%)")
    axes.set_ylim(0, 108)
    axes.grid(axis="y", alpha=0.3)
    direction = "higher" if higher_is_better(metric) else "lower"
    axes.set_title(f"{metric} per category, percent ({direction} is better)")
    fig.legend(loc="outside lower center", ncol=min(len(runs), 3), fontsize=8, frameon=False)
    return _png(fig)


def accuracy_metric(runs: list[RunSummary]) -> str | None:
    names = [m for run in runs for m in run.metric_names]
    for preferred in ACCURACY_PREFERENCE:
        if preferred in names:
            return preferred
    return names[0] if names else None


def efficiency_chart(runs: list[RunSummary]) -> bytes:
    """Mean accuracy against median latency, one point per run, marker area ~ parameters."""
    from matplotlib import colormaps

    metric = accuracy_metric(runs)
    fig = _new_figure(6.5, 4.5)
    axes = fig.subplots()
    points = []
    for j, run in enumerate(runs):
        mean = run.values.get("mean", {})
        latency = mean.get("latency_ms_median", math.nan)
        accuracy = mean.get(metric, math.nan) if metric else math.nan
        if not (math.isnan(latency) or math.isnan(accuracy)):
            points.append((j, run, latency, 100 * accuracy, mean.get("params_total", math.nan)))
    if not points:
        axes.text(0.5, 0.5, "No run measured latency\n(evaluation.latency.enabled was false)",
                  ha="center", va="center", transform=axes.transAxes)  # fmt: skip
        axes.set_axis_off()
        return _png(fig)
    known = [p for *_, p in points if not math.isnan(p) and p > 0]
    largest = max(known, default=1.0)
    colours = colormaps["tab10"]
    for j, run, latency, accuracy, params in points:
        size = 60.0 if math.isnan(params) or params <= 0 else 40 + 800 * params / largest
        axes.scatter(
            latency,
            accuracy,
            s=size,
            color=colours(j % 10),
            alpha=0.75,
            edgecolors="black",
            hatch="//" if run.random_weights else None,
            label=f"{run.label} ({_params(params)} params)",
        )
        offset = math.sqrt(size) / 2 + 4  # past the marker's edge, in points
        axes.annotate(
            run.label, (latency, accuracy), textcoords="offset points", xytext=(offset, 0),
            va="center", fontsize=8,
        )  # fmt: skip
    latencies = [p[2] for p in points]
    if min(latencies) > 0 and max(latencies) / min(latencies) > 20:
        axes.set_xscale("log")
    axes.set_xlabel("latency per image, median (ms, batch 1), lower is better")
    axes.set_ylabel(f"mean {metric} (%), higher is better")
    axes.set_title("Accuracy against latency (marker area ~ parameters)")
    axes.grid(alpha=0.3)
    axes.margins(0.2)
    fig.legend(loc="outside lower center", fontsize=7, markerscale=0.5, frameon=False)
    missing = [run.label for run in runs if run not in [p[1] for p in points]]
    if missing:
        axes.text(0.01, 0.01, "not shown (no latency measured): " + ", ".join(missing),
                  transform=axes.transAxes, fontsize=7, color="grey")  # fmt: skip
    return _png(fig)


def _params(count: float) -> str:
    if math.isnan(count):
        return "?"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.3g}{unit}"
    return f"{count:.0f}"


# --- the whole report -----------------------------------------------------------------------


def build_report(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Read ``run_dirs`` and write the comparison under ``out_dir``; returns the files written.

    The paper layout (data sets as rows) is
    :func:`adcore.outputs.report.paper.write_paper_report`."""
    from adcore.infra.files import ensure_writable

    if not run_dirs:
        raise DataError("No run folders given.", "Pass one or more folders written by ad eval.")
    runs = [read_run(Path(d)) for d in run_dirs]
    label_runs(runs)
    ensure_writable(out_dir)
    rows = comparison_rows(runs)
    efficiency = efficiency_rows(runs)
    written: list[Path] = []
    charts: list[Path] = []
    for metric in dict.fromkeys(row.metric for row in rows):
        path = out_dir / "charts" / f"{metric}.png"
        atomic_write_bytes(path, metric_chart(metric, runs, rows))
        charts.append(path)
    path = out_dir / "charts" / "efficiency.png"
    atomic_write_bytes(path, efficiency_chart(runs))
    charts.append(path)
    atomic_write_text(out_dir / "report.csv", report_csv(runs, rows, efficiency))
    atomic_write_text(out_dir / "report.md", report_markdown(runs, rows, efficiency, charts))
    written += [out_dir / "report.csv", out_dir / "report.md", *charts]
    atomic_write_text(out_dir / "report.html", report_html(runs, rows, efficiency, charts))
    written.append(out_dir / "report.html")
    return written

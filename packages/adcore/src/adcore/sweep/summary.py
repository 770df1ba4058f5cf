"""After the units: each run's summary over all its categories, then the sweep's table.

Units of one run may finish on different workers, each rewriting the run's summary over the
one category it ran; so the driver rewrites every run's summary at the end from the
``metrics.csv`` files. The sweep table follows the papers' few-shot convention: for each
setting (every axis but the seed), the mean and the sample standard deviation (n-1) over
seeds of each metric's mean over categories.
"""

from __future__ import annotations

import importlib
import json
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcore.infra.files import atomic_write_text, csv_text
from adcore.outputs.reporting import RunContext, default_reporters
from adcore.outputs.results import RunResult, read_category, run_result
from adcore.plugins.registry import Registry
from adcore.sweep.plan import Experiment

SEED_KEY = "experiment.seed"
SETTING_COLUMNS = ("method", "dataset", "k_shot")
SETTING_KEYS = ("model.name", "data.dataset", "data.k_shot")


def rewrite_run_summary(experiment: Experiment, registry: Registry) -> RunResult:
    """Read back every finished category and call the default reporters, as a resume does."""
    layout, config = experiment.layout, experiment.config
    finished = [c for c in experiment.categories if layout.metrics(c).exists()]
    results = [read_category(layout, c, config.metric_names) for c in finished]
    env = json.loads(layout.env.read_text()) if layout.env.exists() else {}
    run = run_result(config, layout, results, env)
    if not results:
        return run
    context = RunContext(layout, config, env)
    for reporter in default_reporters(registry):
        for result in results:
            reporter.on_category(result, None, context)
        reporter.on_run(run, context)
    return run


def seed_statistics(
    experiments: Sequence[Experiment], runs: Sequence[RunResult]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Rows of mean and std over seeds; only runs with every category finished count."""
    extra_axes = [k for e in experiments for k in e.point if k not in (*SETTING_KEYS, SEED_KEY)]
    extra_axes = list(dict.fromkeys(extra_axes))
    names: list[str] = list(dict.fromkeys(n for r in runs for n in r.metric_names))
    groups: dict[str, dict[str, Any]] = {}
    for experiment, run in zip(experiments, runs, strict=True):
        if len(run.categories) != len(experiment.categories):
            continue
        base = experiment.config.base
        setting = {
            "method": run.method,
            "dataset": run.dataset,
            "k_shot": base.data.k_shot,
            **{k: experiment.point.get(k, "") for k in extra_axes},
        }
        key = json.dumps(setting, sort_keys=True, default=str)
        group = groups.setdefault(key, {**setting, "seeds": [], "runs": []})
        group["seeds"].append(base.experiment.seed)
        group["runs"].append(run.mean())
    rows = []
    for group in groups.values():
        row = {k: v for k, v in group.items() if k not in ("seeds", "runs")}
        row["n_seeds"] = len(group["runs"])
        row["seeds"] = " ".join(str(s) for s in group["seeds"])
        for name in names:
            values = [m.get(name, math.nan) for m in group["runs"]]
            row[f"{name}_mean"] = statistics.fmean(values)
            row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else math.nan
        rows.append(row)
    stats = [c for n in names for c in (f"{n}_mean", f"{n}_std")]
    return [*SETTING_COLUMNS, *extra_axes, "n_seeds", "seeds", *stats], rows


def write_sweep_summary(
    header: list[str], rows: list[dict[str, Any]], names: list[str], out_dir: Path, random: bool
) -> None:
    """``sweep_summary.csv`` (full precision) and ``sweep_summary.md`` (percent, mean ± std)."""
    atomic_write_text(
        out_dir / "sweep_summary.csv",
        csv_text(header, [[r.get(h, "") for h in header] for r in rows]),
    )
    keys = [h for h in header if not h.endswith(("_mean", "_std")) and h != "seeds"]
    lines = ["# Sweep summary", ""]
    if random:
        lines += ["> Random weights: some runs use randomly initialised models (a demo).", ""]
    lines += ["| " + " | ".join([*keys, *names]) + " |", "|" + "---|" * (len(keys) + len(names))]
    for row in rows:
        cells = [str(row[k]) for k in keys] + [_mean_std(row, n) for n in names]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Mean ± sample standard deviation over seeds of the category mean, in percent.",
        "",
    ]
    atomic_write_text(out_dir / "sweep_summary.md", "\n".join(lines))


def _mean_std(row: dict[str, Any], name: str) -> str:
    mean, std = row.get(f"{name}_mean", math.nan), row.get(f"{name}_std", math.nan)
    if math.isnan(mean):
        return "n/a"
    return f"{100 * mean:.1f}" if math.isnan(std) else f"{100 * mean:.1f} ± {100 * std:.1f}"


def build_report(run_dirs: list[Path], out_dir: Path) -> bool:
    """``ad report`` over the sweep's runs, where this adcore has it."""
    try:
        report = importlib.import_module("adcore.outputs.report.compare")
    except ModuleNotFoundError as error:
        if error.name != "adcore.outputs.report.compare":
            raise
        return False
    report.build_report(run_dirs, out_dir)
    return True


def summarise_sweep(
    experiments: Sequence[Experiment],
    registry: Registry,
    out_dir: Path,
    layout: str = "comparison",
) -> tuple[list[RunResult], list[str], list[dict[str, Any]], bool]:
    runs = [rewrite_run_summary(e, registry) for e in experiments]
    header, rows = seed_statistics(experiments, runs)
    names = list(dict.fromkeys(n for r in runs for n in r.metric_names))
    out_dir.mkdir(parents=True, exist_ok=True)
    write_sweep_summary(header, rows, names, out_dir, any(r.random_weights for r in runs))
    reported = build_report([r.run_dir for r in runs if r.categories], out_dir)
    if layout == "paper" and any(r.categories for r in runs):
        from adcore.outputs.report.paper import write_paper_report

        write_paper_report([r.run_dir for r in runs if r.categories], out_dir)
    return runs, header, rows, reported

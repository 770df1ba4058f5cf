"""``ad eval``."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from adcore.cli.options import (
    CategoryOption,
    ConfigOption,
    DataRootOption,
    DatasetOption,
    DeviceOption,
    JsonOption,
    KShotOption,
    MethodOption,
    NoProgressOption,
    OutputOption,
    RandomWeightsOption,
    SetOption,
    SkipBadSamplesOption,
    flag,
    resolved_config,
)
from adcore.infra.errors import UsageError
from adcore.infra.precision import precision_note
from adcore.outputs.results import RunResult

if TYPE_CHECKING:
    from adcore.config.sections import ResolvedConfig

RANDOM_BANNER = (
    "[bold yellow]Random weights:[/] every model is randomly initialised; the numbers below "
    "show the pipeline working, not the method's accuracy."
)
UNTRAINED_BANNER = (
    "[bold yellow]Untrained method parameters:[/] the method's trained parts (prompts, "
    "adaptors) come from no trained checkpoint; train them with `ad train` and set "
    "model.checkpoint."
)


def results_table(result: RunResult) -> Table:
    table = Table(title=f"{result.method} on {result.dataset} ({result.experiment}), percent")
    table.add_column("category")
    for name in result.metric_names:
        table.add_column(name, justify="right")
    rows = [(r.category, r.metrics) for r in result.categories] + [("mean", result.mean())]
    for index, (category, values) in enumerate(rows):
        cells = [
            "n/a" if math.isnan(values.get(n, math.nan)) else f"{100 * values[n]:.1f}"
            for n in result.metric_names
        ]
        table.add_row(category, *cells, end_section=index == len(rows) - 2)
    return table


ReporterOption = Annotated[
    list[str] | None,
    typer.Option(
        "--reporter",
        help="Reporter to run (repeatable; name or dist:name); `default` stands for the default "
        "ones. Without it: evaluation.reporters, else the default reporters.",
    ),
]


def eval_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    category: CategoryOption = None,
    k_shot: KShotOption = None,
    device: DeviceOption = None,
    data_root: DataRootOption = None,
    output: OutputOption = None,
    random_weights: RandomWeightsOption = False,
    overwrite: Annotated[
        bool, flag("--overwrite", help="Recompute finished categories and replace a run.")
    ] = False,
    save_maps: Annotated[
        bool, flag("--save-maps", help="Write each anomaly map as float32 TIFF.")
    ] = False,
    save_model: Annotated[
        bool, flag("--save-model", help="Save each category's fitted method state.")
    ] = False,
    skip_bad_samples: SkipBadSamplesOption = False,
    reporter: ReporterOption = None,
    no_progress: NoProgressOption = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a method on a data set: metrics per category, efficiency, result files."""
    from adcore.run.runner import RunOptions, evaluate

    assignments = list(set_ or [])
    if skip_bad_samples:
        assignments.append("data.skip_bad_samples=true")
    if reporter:
        check_reporter_option(reporter)
        assignments.append(f"evaluation.reporters={json.dumps(reporter)}")
    resolved = resolved_config(
        config,
        assignments,
        random_weights,
        method=method,
        dataset=dataset,
        category=category,
        k_shot=k_shot,
        device=device,
        data_root=data_root,
        output=output,
    )
    if as_json:
        require_json_summary(resolved.base.evaluation.reporters)
    console = Console(stderr=as_json)

    def started() -> None:  # once the run is accepted: never before a refusal
        for note in resolved.notes:
            console.print(note, highlight=False)
        if resolved.random_weights:
            console.print(RANDOM_BANNER)

    options = RunOptions(overwrite, save_maps, save_model, show_progress=not no_progress)
    result = evaluate(resolved, options, not no_progress and not as_json, started)
    print_outcome(console, resolved, result, as_json)


def check_reporter_option(names: list[str]) -> None:
    """``--reporter`` names a registered reporter or ``default``: else a usage error."""
    from adcore.config.resolve import reporter_problems
    from adcore.plugins.registry import get_registry

    problems = reporter_problems(names, get_registry())
    if problems:
        raise UsageError(
            "--reporter: " + " ".join(problems),
            "Give one of those names (`ad list-plugins` lists every reporter).",
        )


def require_json_summary(reporters: list[str] | None) -> None:
    """``--json`` prints ``summary.json``: refuse a reporter list that leaves out its writer."""
    if reporters is None or any(
        n == "default" or n.rpartition(":")[2] == "summary-json" for n in reporters
    ):
        return
    raise UsageError(
        f"--json prints summary.json, but the chosen reporters ({', '.join(reporters)}) do not "
        "include summary-json, which writes it.",
        "Add --reporter summary-json (or --reporter default), or drop --json.",
    )


def print_outcome(console: Console, resolved: ResolvedConfig, result: RunResult, as_json: bool):
    """What a finished ``ad eval`` says: kept categories, the table, notes, banners."""
    kept = [r.category for r in result.categories if r.resumed]
    if kept:
        console.print(
            f"Kept from an earlier run (same config, not recomputed): {', '.join(kept)}. "
            "--overwrite recomputes them.",
            highlight=False,
        )
    if as_json:
        print((result.run_dir / "summary.json").read_text())
        return
    console.print(results_table(result))
    for category in result.categories:  # why a value is n/a, what resizing lost
        for note in category.notes:
            console.print(f"[yellow]note[/] {category.category}: {note}", highlight=False)
    precision = precision_note(resolved.base.model.precision)  # said once the run accepted it
    if precision:
        console.print(precision, highlight=False)
    if result.random_weights:
        console.print(RANDOM_BANNER.replace("below", "above"))
    if result.untrained_parameters:
        console.print(UNTRAINED_BANNER)
    console.print(f"Results: {result.run_dir}")

"""``ad eval``."""

from __future__ import annotations

import math
from typing import Annotated

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
    OutputOption,
    RandomWeightsOption,
    SetOption,
    resolved_config,
)
from adcore.infra.errors import Interrupted
from adcore.infra.precision import precision_note
from adcore.outputs.results import RunLayout, RunResult

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


def interrupted(layout: RunLayout, categories: list[str]) -> Interrupted:
    """What Ctrl-C left behind: finished categories are kept on disk, and a rerun resumes."""
    done = [c for c in categories if layout.metrics(c).exists()]
    left = [c for c in categories if c not in done]
    kept = (
        f"Finished and kept in {layout.root}: {', '.join(done)}."
        if done
        else f"No category had finished; nothing was kept in {layout.root}."
    )
    return Interrupted(
        f"Interrupted. {kept} Not finished: {', '.join(left) or 'none'}.",
        "Rerun the same command to resume: finished categories are kept, the others computed.",
    )


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
        bool, typer.Option("--overwrite", help="Recompute finished categories and replace a run.")
    ] = False,
    save_maps: Annotated[
        bool, typer.Option("--save-maps", help="Write each anomaly map as float32 TIFF.")
    ] = False,
    save_model: Annotated[
        bool, typer.Option("--save-model", help="Save each category's fitted method state.")
    ] = False,
    skip_bad_samples: Annotated[
        bool, typer.Option("--skip-bad-samples", help="Leave out unreadable or bad samples.")
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Evaluate a method on a data set: metrics per category, efficiency, result files."""
    from adcore.infra.progress import Progress
    from adcore.plugins.registry import get_registry
    from adcore.run.runner import Evaluation, RunOptions

    assignments = list(set_ or [])
    if skip_bad_samples:
        assignments.append("data.skip_bad_samples=true")
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
    console = Console(stderr=as_json)
    for note in resolved.notes:
        console.print(note, highlight=False)
    if resolved.random_weights:
        console.print(RANDOM_BANNER)
    options = RunOptions(overwrite, save_maps, save_model, show_progress=not no_progress)
    with Progress(enabled=not no_progress and not as_json) as progress:
        evaluation = Evaluation(resolved, get_registry(), options, progress)
        try:
            result = evaluation.run()
        except KeyboardInterrupt:
            raise interrupted(evaluation.layout, evaluation.categories) from None
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

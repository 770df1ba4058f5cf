"""``ad sweep``."""

from __future__ import annotations

import math
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adcore.cli.eval_cmd import RANDOM_BANNER
from adcore.cli.options import DataRootOption, NoProgressOption, RandomWeightsOption, flag
from adcore.cli.tables import print_table


class ExecutorName(str, Enum):
    local = "local"
    ray = "ray"


def sweep_table(header: list[str], rows: list[dict[str, Any]]) -> Table:
    names = [h.removesuffix("_mean") for h in header if h.endswith("_mean")]
    keys = [h for h in header if not h.endswith(("_mean", "_std")) and h != "seeds"]
    table = Table(title="Sweep: mean ± std over seeds of the category mean, percent")
    for column in [*keys, *names]:
        table.add_column(column, justify="left" if column in keys else "right")
    for row in rows:
        cells = []
        for name in names:
            mean, std = row[f"{name}_mean"], row[f"{name}_std"]
            if math.isnan(mean):
                cells.append("n/a")
            else:
                cells.append(
                    f"{100 * mean:.1f}" + ("" if math.isnan(std) else f" ± {100 * std:.1f}")
                )
        table.add_row(*[str(row[k]) for k in keys], *cells)
    return table


SweepFileArgument = Annotated[
    Path,
    typer.Argument(
        help="Sweep YAML: base (config file), set, axes, exclude, overrides, output_root, name."
    ),
]
ExecutorOption = Annotated[
    ExecutorName,
    typer.Option("--executor", "-e", help="local: one unit after another here; ray: Ray tasks."),
]
RayAddressOption = Annotated[
    str | None,
    typer.Option(
        "--ray-address",
        envvar="RAY_ADDRESS",
        help="Ray cluster to join (e.g. ray://head:10001 or auto); unset: start a local one.",
    ),
]
CpusPerUnitOption = Annotated[
    float, typer.Option("--cpus-per-unit", min=0, help="CPUs each Ray task requests.")
]
GpusPerUnitOption = Annotated[
    float | None,
    typer.Option(
        "--gpus-per-unit",
        min=0,
        help="GPUs each Ray task requests; default 1 on a cluster with GPUs, else 0.",
    ),
]
NumCpusOption = Annotated[
    int | None,
    typer.Option("--num-cpus", min=1, help="CPUs of a Ray cluster started here; default all."),
]
MaxRetriesOption = Annotated[
    int, typer.Option("--max-retries", min=0, help="Ray retries of a unit whose worker died.")
]
OverwriteOption = Annotated[
    bool, flag("--overwrite", help="Recompute finished units and replace their runs.")
]


def sweep_command(
    sweep_file: SweepFileArgument,
    executor: ExecutorOption = ExecutorName.local,
    ray_address: RayAddressOption = None,
    cpus_per_unit: CpusPerUnitOption = 1.0,
    gpus_per_unit: GpusPerUnitOption = None,
    num_cpus: NumCpusOption = None,
    max_retries: MaxRetriesOption = 3,
    overwrite: OverwriteOption = False,
    no_progress: NoProgressOption = False,
    random_weights: RandomWeightsOption = False,
    data_root: DataRootOption = None,
) -> None:
    """Run a grid of experiments (every category of each), skipping finished units, then
    summarise: each run's summary, and mean ± std over seeds per setting.

    --data-root replaces data.root of every point (train: entries keep their own)."""
    from adcore.infra.progress import Progress
    from adcore.sweep.driver import run_sweep
    from adcore.sweep.executors import LocalExecutor, RayExecutor

    console = Console()
    if executor is ExecutorName.ray:
        chosen = RayExecutor(ray_address, num_cpus, cpus_per_unit, gpus_per_unit, max_retries)
    else:
        chosen = LocalExecutor()
    with Progress(enabled=not no_progress) as progress:
        outcome = run_sweep(sweep_file, chosen, overwrite, progress, random_weights, data_root)
    if outcome.rows:
        print_table(sweep_table(outcome.header, outcome.rows), console)
    if any(e.config.random_weights for e in outcome.plan.experiments):
        console.print(RANDOM_BANNER.replace("below", "above"))
    console.print(
        f"{len(outcome.computed)} unit(s) run, {outcome.skipped} finished earlier. "
        f"Summary: {outcome.summary_dir}"
    )
    if outcome.failures:
        err = Console(stderr=True)
        for label, message in outcome.failures:
            err.print(f"[bold red]Failed:[/] {label}: {message}", highlight=False)
        err.print(
            f"{len(outcome.failures)} unit(s) failed; the others are saved. Fix the cause and "
            "rerun the same command to run only the missing units."
        )
        raise typer.Exit(code=1)

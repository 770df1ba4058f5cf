"""``ad bench``: a method's efficiency figures against a bare forward of its backbone."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from adcore.cli.options import (
    ConfigOption,
    DataRootOption,
    DatasetOption,
    DeviceOption,
    JsonOption,
    KShotOption,
    MethodOption,
    RandomWeightsOption,
    SetOption,
    resolved_config,
)

if TYPE_CHECKING:
    from adcore.run.bench import BenchReport


def bench_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    k_shot: KShotOption = None,
    device: DeviceOption = None,
    data_root: DataRootOption = None,
    random_weights: RandomWeightsOption = False,
    warmup: Annotated[
        int | None, typer.Option("--warmup", help="Warm-up iterations (default: by device).")
    ] = None,
    iters: Annotated[
        int | None, typer.Option("--iters", help="Timed iterations (default: by device).")
    ] = None,
    batch: Annotated[
        int | None,
        typer.Option(
            "--batch",
            help="Batch size of the throughput run (default: evaluation.latency.throughput_batch).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Time a fitted method against a bare forward of its backbone (the floor).

    Reports latency (batch 1), throughput, peak memory, parameters, memory bank and GFLOPs,
    and the method / backbone ratios of time and FLOPs at the same input size.
    """
    from adcore.outputs.env import machine_summary
    from adcore.run.bench import run_bench

    resolved = resolved_config(
        config,
        set_,
        random_weights,
        method=method,
        dataset=dataset,
        k_shot=k_shot,
        device=device,
        data_root=data_root,
    )
    report = run_bench(resolved, warmup, iters, batch, show_progress=not as_json)
    console = Console(stderr=as_json)
    if as_json:
        shown = report.model_dump(mode="json", exclude={"device", "throughput_batch"})
        print(json.dumps(shown, indent=2, default=str))
    else:
        console.print(bench_table(report))
        console.print(f"Machine: {machine_summary({'machine': report.machine})}", highlight=False)
    if report.load_warning:
        console.print(f"[yellow]{report.load_warning}[/]", highlight=False)
    if report.random_weights and not as_json:
        console.print("[yellow]Random weights[/]: speed figures are valid; accuracy is not.")


def bench_table(report: BenchReport) -> Table:
    """The method's figures beside the bare backbone's, and their ratios."""
    figures, backbone = report.method_figures, report.backbone_figures
    title = f"ad bench: {report.method} (k_shot={report.k_shot}, {report.device})"
    table = Table(title=title)
    table.add_column("figure")
    table.add_column("method", justify="right")
    table.add_column("bare backbone", justify="right")
    rows = [
        ("latency, batch 1, median (ms)", f"{figures.latency_ms_median:.2f}",
         f"{backbone.latency_ms_median:.2f}"),
        ("latency, batch 1, p90 (ms)", f"{figures.latency_ms_p90:.2f}",
         f"{backbone.latency_ms_p90:.2f}"),
        (f"throughput, batch {report.throughput_batch} (img/s)",
         f"{figures.throughput_ips:.2f}", ""),
        ("GFLOPs, batch 1 (MAC = 2 FLOPs)", f"{figures.gflops:.2f}", f"{backbone.gflops:.2f}"),
        ("peak memory (MiB)", f"{figures.peak_memory_mb:.0f}", ""),
        ("parameters total / trainable",
         f"{figures.params_total:,} / {figures.params_trainable:,}", ""),
        ("memory bank (MiB)", f"{figures.memory_bank_mb:.2f}", ""),
        ("ratio method / backbone: time", f"{report.ratio_time:.2f}", ""),
        ("ratio method / backbone: FLOPs", f"{report.ratio_gflops:.2f}", ""),
    ]  # fmt: skip
    for row in rows:
        table.add_row(*row)
    return table

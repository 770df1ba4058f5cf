"""``ad bench``: a method's efficiency figures against a bare forward of its backbone."""

from __future__ import annotations

import json
from pathlib import Path
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
    from adcore.run.format_bench import FormatReport

WarmupOption = Annotated[
    int | None, typer.Option("--warmup", help="Warm-up iterations (default: by device).")
]
ItersOption = Annotated[
    int | None, typer.Option("--iters", help="Timed iterations (default: by device).")
]
BatchOption = Annotated[
    int | None,
    typer.Option(
        "--batch",
        help="Batch size of the throughput run (default: evaluation.latency.throughput_batch; "
        "16 for bundles).",
    ),
]
ModelOption = Annotated[
    Path | None,
    typer.Option(
        "--model",
        help="Measure an exported bundle (ad export) instead of a method: latency, "
        "throughput, peak memory, file size and image AUROC (on --dataset/--data-root/"
        "--category, or the bundle's run's test images).",
        show_default=False,
    ),
]
RunOption = Annotated[
    Path | None,
    typer.Option(
        "--run",
        help="Compare the formats of a run saved with --save-model: one table over "
        "--formats x --precision (exports each bundle, then measures it).",
        show_default=False,
    ),
]
BenchCategoryOption = Annotated[
    str | None,
    typer.Option(
        "--category", help="Category of --run to export, or of the data set to score --model on."
    ),
]
FormatsOption = Annotated[
    str, typer.Option("--formats", help="With --run: comma-separated torch, onnx, openvino.")
]
PrecisionsOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="With --run: comma-separated precisions (fp32, bf16, fp16, int8); a pair a "
        "format does not make is a failed row with the reason.",
    ),
]
BundlesOption = Annotated[
    Path | None,
    typer.Option(
        "--bundles",
        help="With --run: keep the exported bundles in this folder (default: a temporary one).",
        show_default=False,
    ),
]


def bench_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    k_shot: KShotOption = None,
    device: DeviceOption = None,
    data_root: DataRootOption = None,
    random_weights: RandomWeightsOption = False,
    warmup: WarmupOption = None,
    iters: ItersOption = None,
    batch: BatchOption = None,
    model: ModelOption = None,
    run: RunOption = None,
    category: BenchCategoryOption = None,
    formats: FormatsOption = "torch,onnx,openvino",
    precision: PrecisionsOption = "fp32",
    bundles: BundlesOption = None,
    as_json: JsonOption = False,
) -> None:
    """Time a fitted method against a bare forward of its backbone (the floor), or an
    exported model (--model), or a run's formats side by side (--run --formats).

    Reports latency (batch 1), throughput, peak memory, parameters, memory bank and GFLOPs,
    and the method / backbone ratios of time and FLOPs at the same input size; for bundles,
    one table: format, precision, status, file size, image AUROC, latency, throughput, peak
    memory (each row measured in a fresh process).
    """
    if model is not None or run is not None:
        _bench_exported(
            model, run, category, formats, precision, bundles, config, set_, dataset,
            data_root, warmup, iters, batch, as_json,
        )  # fmt: skip
        return
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


def _bench_exported(
    model: Path | None,
    run: Path | None,
    category: str | None,
    formats: str,
    precision: str,
    bundles: Path | None,
    config: Path | None,
    set_: list[str] | None,
    dataset: str | None,
    data_root: Path | None,
    warmup: int | None,
    iters: int | None,
    batch: int | None,
    as_json: bool,
) -> None:
    """``ad bench --model`` / ``--run``: build the format table and print it."""
    from adcore.infra.errors import UsageError
    from adcore.infra.progress import Progress
    from adcore.outputs.env import machine_summary
    from adcore.run.efficiency import default_iters
    from adcore.run.format_bench import bench_formats, bench_model

    if model is not None and run is not None:
        raise UsageError("--model and --run were both given.", "Pass one of them.")
    resolved = None
    if dataset is not None or config is not None:
        resolved = resolved_config(config, set_, dataset=dataset, data_root=data_root)
    default_warmup, default_measure = default_iters("cpu")
    figures = {
        "batch": batch or 16,
        "warmup": default_warmup if warmup is None else warmup,
        "iters": default_measure if iters is None else iters,
    }
    if model is not None:
        report = bench_model(model.expanduser(), resolved, category, **figures)
    else:
        with Progress(enabled=not as_json) as progress:
            report = bench_formats(
                run.expanduser(), category, _listed(formats), _listed(precision),
                bundles.expanduser() if bundles else None, resolved, progress=progress,
                **figures,
            )  # fmt: skip
    console = Console(stderr=as_json)
    if as_json:
        print(json.dumps(report.model_dump(mode="json"), indent=2, default=str))
    else:
        console.print(format_table(report))
        console.print(f"Machine: {machine_summary({'machine': report.machine})}", highlight=False)
    if report.load_warning:
        console.print(f"[yellow]{report.load_warning}[/]", highlight=False)
    if report.random_weights and not as_json:
        console.print("[yellow]Random weights[/]: speed figures are valid; accuracy is not.")


def _listed(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def format_table(report: FormatReport) -> Table:
    """One row per format and precision: status, size, AUROC, latency, throughput, memory."""

    def number(value: float | None, spec: str) -> str:
        return "" if value is None else format(value, spec)

    title = (
        f"ad bench: {report.method} / {report.category} (CPU, {report.measure_iters} timed calls)"
    )
    table = Table(title=title)
    for name in ("format", "precision", "status", "file size (MiB)", "image AUROC"):
        table.add_column(name, justify="right" if "(" in name or "AUROC" in name else "left")
    table.add_column("latency b1 (ms)", justify="right")
    table.add_column(f"throughput b{report.throughput_batch} (img/s)", justify="right")
    table.add_column("peak memory (MiB)", justify="right")
    for row in report.rows:
        status = row.status if not row.reason else f"{row.status}: {row.reason}"
        table.add_row(
            row.format, row.precision, status, number(row.file_mb, ".1f"),
            number(row.auroc, ".3f"), number(row.latency_ms, ".2f"),
            number(row.throughput_ips, ".1f"), number(row.peak_memory_mb, ".0f"),
        )  # fmt: skip
    return table

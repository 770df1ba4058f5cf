"""``ad bench``: a method's efficiency figures against a bare forward of its backbone."""

from __future__ import annotations

import json
from typing import Annotated

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
from adcore.contracts.records import Capability


def _supported_k_shot(capabilities: frozenset[Capability], requested: int | str) -> int | str:
    """The requested setting when the method has it, else the one it is usually run in."""
    from adcore.run.components import required_capability

    if required_capability(requested) in capabilities:
        return requested
    if Capability.ZERO_SHOT in capabilities:
        return 0
    return "all" if Capability.FULL_SHOT in capabilities else 1


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
    from adcore.infra.progress import Progress
    from adcore.plugins.registry import get_registry
    from adcore.run.efficiency import measure_backbone, measure_efficiency, method_over_backbone
    from adcore.run.runner import Evaluation, RunOptions

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
    batch = batch or resolved.base.evaluation.latency.throughput_batch
    setting = _supported_k_shot(resolved.method.spec.capabilities, resolved.base.data.k_shot)
    resolved.base.data.k_shot = setting
    console = Console(stderr=as_json)
    with Progress(enabled=not as_json) as progress:
        evaluation = Evaluation(resolved, get_registry(), RunOptions(show_progress=False), progress)
        category = evaluation.categories[0]
        prepared = evaluation.prepare(category)
        fitted = evaluation.fit(category, prepared)
        runtime = evaluation.runtime
        progress.note(f"measuring {resolved.method.spec.name} on {runtime.device} ...")
        figures = measure_efficiency(fitted, runtime, warmup, iters, throughput_batch=batch)
        backbone = measure_backbone(fitted, runtime, warmup, iters)
    ratios = method_over_backbone(figures, backbone)
    report = {
        "method": resolved.method.spec.name,
        "k_shot": setting,
        "category": category,
        "support_images": len(prepared.support),
        "random_weights": resolved.random_weights,
        "weights": fitted.weights_identity(),
        "method_figures": figures.model_dump(),
        "backbone_figures": backbone.model_dump(),
        "ratio_time": ratios["latency"],
        "ratio_gflops": ratios["gflops"],
    }
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    table = Table(title=f"ad bench: {report['method']} (k_shot={setting}, {runtime.device})")
    table.add_column("figure")
    table.add_column("method", justify="right")
    table.add_column("bare backbone", justify="right")
    table.add_row(
        "latency, batch 1, median (ms)",
        f"{figures.latency_ms_median:.2f}",
        f"{backbone.latency_ms_median:.2f}",
    )
    table.add_row(
        "latency, batch 1, p90 (ms)",
        f"{figures.latency_ms_p90:.2f}",
        f"{backbone.latency_ms_p90:.2f}",
    )
    table.add_row(f"throughput, batch {batch} (img/s)", f"{figures.throughput_ips:.2f}", "")
    table.add_row(
        "GFLOPs, batch 1 (MAC = 2 FLOPs)", f"{figures.gflops:.2f}", f"{backbone.gflops:.2f}"
    )
    table.add_row("peak memory (MiB)", f"{figures.peak_memory_mb:.0f}", "")
    table.add_row(
        "parameters total / trainable",
        f"{figures.params_total:,} / {figures.params_trainable:,}",
        "",
    )
    table.add_row("memory bank (MiB)", f"{figures.memory_bank_mb:.2f}", "")
    table.add_row("ratio method / backbone: time", f"{ratios['latency']:.2f}", "")
    table.add_row("ratio method / backbone: FLOPs", f"{ratios['gflops']:.2f}", "")
    console.print(table)
    if resolved.random_weights:
        console.print("[yellow]Random weights[/]: speed figures are valid; accuracy is not.")

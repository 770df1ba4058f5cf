"""``ad bench``: a fitted method's efficiency figures against a bare forward of its backbone."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from adcore.config.sections import ResolvedConfig
from adcore.contracts.records import Capability
from adcore.run.efficiency import BackboneFigures, EfficiencyFigures


class BenchReport(BaseModel):
    """What ``ad bench`` measured: the method's figures, the backbone's, and their ratios."""

    method: str
    k_shot: int | str
    category: str
    device: str
    throughput_batch: int
    support_images: int
    random_weights: bool
    weights: dict[str, Any]
    method_figures: EfficiencyFigures
    backbone_figures: BackboneFigures
    ratio_time: float
    ratio_gflops: float
    machine: dict[str, Any]  # CPUs, threads, load average when the bench started
    load_warning: str = ""  # said when that load makes the times unreliable


def supported_k_shot(capabilities: frozenset[Capability], requested: int | str) -> int | str:
    """The requested setting when the method has it, else the one it is usually run in."""
    from adcore.run.components import required_capability

    if required_capability(requested) in capabilities:
        return requested
    if Capability.ZERO_SHOT in capabilities:
        return 0
    return "all" if Capability.FULL_SHOT in capabilities else 1


def bench_config(resolved: ResolvedConfig) -> ResolvedConfig:
    """``resolved`` with a k-shot setting its method supports (a copy; the input is kept)."""
    setting = supported_k_shot(resolved.method.spec.capabilities, resolved.base.data.k_shot)
    data = resolved.base.data.model_copy(update={"k_shot": setting})
    return resolved.model_copy(update={"base": resolved.base.model_copy(update={"data": data})})


def run_bench(
    resolved: ResolvedConfig,
    warmup: int | None = None,
    iters: int | None = None,
    batch: int | None = None,
    show_progress: bool = True,
) -> BenchReport:
    """Fit on the first category, then time the method and its bare backbone.

    ``warmup``/``iters`` default by device; ``batch`` (the throughput run's batch size)
    defaults to ``evaluation.latency.throughput_batch``. The machine and its load are taken
    first, before this process's own work adds to the load average.
    """
    from adcore.infra.progress import Progress
    from adcore.outputs.env import busy_machine_note, describe_machine
    from adcore.plugins.registry import get_registry
    from adcore.run.efficiency import measure_backbone, measure_efficiency, method_over_backbone
    from adcore.run.runner import Evaluation, RunOptions

    machine = describe_machine()
    resolved = bench_config(resolved)
    batch = batch or resolved.base.evaluation.latency.throughput_batch
    with Progress(enabled=show_progress) as progress:
        evaluation = Evaluation(resolved, get_registry(), RunOptions(show_progress=False), progress)
        category = evaluation.categories[0]
        prepared = evaluation.prepare(category)
        fitted = evaluation.fit(category, prepared)
        runtime = evaluation.runtime
        progress.note(f"measuring {resolved.method.spec.name} on {runtime.device} ...")
        figures = measure_efficiency(fitted, runtime, warmup, iters, throughput_batch=batch)
        backbone = measure_backbone(fitted, runtime, warmup, iters)
    ratios = method_over_backbone(figures, backbone)
    return BenchReport(
        method=resolved.method.spec.name,
        k_shot=resolved.base.data.k_shot,
        category=category,
        device=runtime.device,
        throughput_batch=batch,
        support_images=len(prepared.support),
        random_weights=resolved.random_weights,
        weights=fitted.weights_identity(),
        method_figures=figures,
        backbone_figures=backbone,
        ratio_time=ratios["latency"],
        ratio_gflops=ratios["gflops"],
        machine=machine,
        load_warning=busy_machine_note(machine),
    )

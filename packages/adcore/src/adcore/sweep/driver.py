"""``ad sweep``: load, plan, run the pending units, summarise."""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adcore.infra.errors import OutputError
from adcore.infra.progress import Progress
from adcore.outputs.results import CategoryResult, RunResult
from adcore.plugins.registry import get_registry
from adcore.sweep.executors import LocalExecutor, RayExecutor
from adcore.sweep.plan import Plan, plan_sweep
from adcore.sweep.spec import load_sweep
from adcore.sweep.training import train_missing
from adcore.sweep.unit import FAIL_ONCE_ENV, KILL_AFTER_ENV, Unit

Executor = LocalExecutor | RayExecutor


@dataclass
class SweepOutcome:
    plan: Plan
    summary_dir: Path
    runs: list[RunResult]
    header: list[str]
    rows: list[dict[str, Any]]
    computed: list[str] = field(default_factory=list)  # labels of units run now
    failures: list[tuple[str, str]] = field(default_factory=list)  # (label, message)
    reported: bool = False  # whether adcore.outputs.report.compare wrote its report too

    @property
    def skipped(self) -> int:
        return self.plan.total_units - len(self.plan.units)


def run_sweep(
    sweep_file: Path,
    executor: Executor | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    random_weights: bool = False,
    data_root: Path | None = None,
) -> SweepOutcome:
    """Run every unfinished unit of the sweep, then write the run and sweep summaries.

    ``data_root`` (``--data-root``) replaces ``data.root`` of every point. Failed units are
    reported in the outcome (the others still run and are summarised); a rerun retries them.
    """
    from adcore.sweep.summary import summarise_sweep

    executor = executor or LocalExecutor()
    executor.require()  # e.g. Ray installed, before any planning or training
    progress = progress or Progress(enabled=False)
    sweep = load_sweep(sweep_file, data_root)
    registry = get_registry()
    fail_once = os.environ.get(FAIL_ONCE_ENV) or None
    plan = plan_sweep(sweep, registry, overwrite, fail_once, random_weights)
    if not plan.experiments:
        raise OutputError(
            f"Sweep file {sweep.path} excludes every point of its grid.", "Loosen exclude:."
        )
    train_missing(sweep, plan, progress)
    computed: list[str] = []
    failures: list[tuple[str, str]] = []
    kill_after = int(os.environ.get(KILL_AFTER_ENV) or 0)
    progress.note(
        f"Sweep {sweep.name}: {len(plan.experiments)} experiment(s), {plan.total_units} unit(s), "
        f"{plan.total_units - len(plan.units)} finished earlier, {len(plan.units)} to run."
    )
    with progress.task("sweep", total=len(plan.units)) as advance:

        def on_done(unit: Unit, result: CategoryResult) -> None:
            computed.append(unit.label)
            progress.note(f"done {unit.label} ({result.seconds:.1f} s)")
            advance(1)
            if kill_after and len(computed) >= kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        def on_failed(unit: Unit, message: str) -> None:
            failures.append((unit.label, message))
            progress.note(f"[red]failed[/] {unit.label}: {message}")
            advance(1)

        if plan.units:
            executor.run(plan.units, progress, on_done, on_failed)
    summary_dir = plan.output_root / "sweeps" / sweep.name
    runs, header, rows, reported = summarise_sweep(
        plan.experiments, registry, summary_dir, sweep.spec.layout
    )
    return SweepOutcome(plan, summary_dir, runs, header, rows, computed, failures, reported)

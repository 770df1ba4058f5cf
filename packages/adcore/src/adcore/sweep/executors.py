"""Executors run pending units and report each one back as it finishes.

``local`` runs them one after another in this process. ``ray`` submits each as a Ray task
(one GPU, or CPUs on a CPU cluster) to an existing cluster or a local one; a task whose
worker died is retried (``max_retries``), and workers write into the shared output root, so
the driver receives only each unit's small ``CategoryResult``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from adcore.infra.errors import AdError, UsageError
from adcore.infra.progress import Progress
from adcore.outputs.results import CategoryResult
from adcore.sweep.unit import Unit, run_unit

OnDone = Callable[[Unit, CategoryResult], None]
OnFailed = Callable[[Unit, str], None]


class LocalExecutor:
    """Units one after another on the configured device, in one progress display."""

    def require(self) -> None:
        """Nothing to check: the local executor needs only what ``ad eval`` needs."""

    def run(
        self, units: Sequence[Unit], progress: Progress, on_done: OnDone, on_failed: OnFailed
    ) -> None:
        for unit in units:
            try:
                result = run_unit(unit, progress)
            except AdError as error:
                on_failed(unit, str(error))
                continue
            on_done(unit, result)


def _ray_unit(unit: Unit) -> CategoryResult:
    return run_unit(unit)


@dataclass
class RayExecutor:
    """Each unit a Ray task; ``address`` None (and no ``RAY_ADDRESS``) starts a local cluster."""

    address: str | None = None
    num_cpus: int | None = None  # of a local cluster; None: all cores
    cpus_per_unit: float = 1.0
    gpus_per_unit: float | None = None  # None: 1 when the cluster has GPUs, else 0
    max_retries: int = 3

    def require(self) -> None:
        """Refuse before any work (planning, training) when Ray is not installed."""
        _import_ray()

    def run(
        self, units: Sequence[Unit], progress: Progress, on_done: OnDone, on_failed: OnFailed
    ) -> None:
        ray = _import_ray()
        started = False
        if not ray.is_initialized():
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.num_cpus, include_dashboard=False, log_to_driver=False)
            started = True
        try:
            self._submit_and_wait(ray, units, progress, on_done, on_failed)
        finally:
            if started:
                ray.shutdown()

    def _submit_and_wait(
        self,
        ray: Any,
        units: Sequence[Unit],
        progress: Progress,
        on_done: OnDone,
        on_failed: OnFailed,
    ) -> None:
        gpus = self.gpus_per_unit
        if gpus is None:
            gpus = 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0
        task = ray.remote(_ray_unit).options(
            num_cpus=self.cpus_per_unit,
            num_gpus=gpus,
            max_retries=self.max_retries,
            retry_exceptions=[OSError],  # a hiccup of the shared file system
        )
        progress.note(
            f"Ray: {len(units)} task(s), {self.cpus_per_unit:g} CPU and {gpus:g} GPU each, "
            f"cluster {ray.cluster_resources()}"
        )
        waiting = {task.remote(unit): unit for unit in units}
        pending = list(waiting)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                unit = waiting.pop(ref)
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayTaskError as error:
                    cause = error.cause if isinstance(error.cause, AdError) else error
                    on_failed(unit, str(cause).strip().splitlines()[-1])
                    continue
                except ray.exceptions.RayError as error:  # worker died past max_retries
                    on_failed(unit, f"{type(error).__name__}: {str(error).splitlines()[0]}")
                    continue
                on_done(unit, result)


RAY_INSTALL = "pip install -e 'packages/adcore[ray]'"


def _import_ray() -> Any:
    try:
        import ray
    except ModuleNotFoundError as error:
        where = f"in this environment ({sys.executable})"
        if error.name == "ray":
            problem = f"--executor ray needs Ray, which is not installed {where}"
        else:  # installed, but one of its own dependencies is missing
            problem = f"--executor ray needs Ray, which cannot be imported {where}: {error}"
        raise UsageError(
            f"{problem}. Ray is an extra of adcore, left out of requirements.txt.",
            f"Install it with `{RAY_INSTALL}` from the repository root (or `pip install "
            "'adcore[ray]'`), then rerun the same command; or run the sweep here with "
            "--executor local.",
        ) from None
    return ray

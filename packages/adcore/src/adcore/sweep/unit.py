"""One unit of work: one category of one experiment, run wherever an executor puts it.

A unit carries its experiment's raw config (plain data, absolute paths), so a worker on
another node resolves the same config, gets the same fingerprint, and writes into the same
run folder. It returns only the small ``CategoryResult``; maps stay on the worker.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from adcore.infra.progress import Progress
from adcore.outputs.results import CategoryResult

FAIL_ONCE_ENV = "AD_SWEEP_FAIL_ONCE"
"""Fault injection for tests: a path. The first unit that starts while no file is there
creates it (writing its label) and ends its process with ``os._exit(1)``, as a worker lost
with its node would. Under Ray the task is retried; under the local executor the whole sweep
process dies, as if killed. Unset in normal use."""

KILL_AFTER_ENV = "AD_SWEEP_KILL_AFTER"
"""Fault injection for tests: a count N. The sweep process kills itself (SIGKILL, no
clean-up) once N units have finished in it, to test resuming a sweep killed halfway."""


@dataclass(frozen=True)
class Unit:
    raw: dict[str, Any]  # the experiment's complete raw config
    category: str
    label: str  # dataset/method/experiment/category, for progress lines and errors
    overwrite: bool = False
    fail_once: str | None = None  # the FAIL_ONCE_ENV path, passed on by the driver


def fail_once(marker: str | None, label: str) -> None:
    if not marker:
        return
    try:
        handle = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.write(handle, label.encode())
    os.close(handle)
    os._exit(1)


def run_unit(unit: Unit, progress: Progress | None = None) -> CategoryResult:
    """Resolve the config here (plugin records do not travel) and run one category."""
    from adcore.config.problems import validate_base
    from adcore.config.resolve import resolve
    from adcore.plugins.registry import get_registry
    from adcore.run.runner import Evaluation, RunOptions

    fail_once(unit.fail_once, unit.label)
    registry = get_registry()
    config = resolve(validate_base(unit.raw), registry)
    show = progress is not None and progress.enabled
    options = RunOptions(overwrite=unit.overwrite, show_progress=show)
    evaluation = Evaluation(config, registry, options, progress, categories=[unit.category])
    return evaluation.run().categories[0]

"""The reporter contract: typed results in, files out."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.decoding import Decoding
from ad_runtime.preprocessing import Preprocessing
from adcore.config.sections import ResolvedConfig
from adcore.contracts.dataset import Sample
from adcore.outputs.results import CategoryResult, RunLayout, RunResult


@dataclass
class RunContext:
    """What every reporter may read about the run."""

    layout: RunLayout
    config: ResolvedConfig
    env: dict[str, Any] = field(default_factory=dict)

    @property
    def run_dir(self) -> Path:
        return self.layout.root


@dataclass
class CategoryOutputs:
    """A freshly computed category's raw outputs (absent when a category was resumed)."""

    samples: list[Sample]
    scores: np.ndarray  # [N]
    maps: np.ndarray  # [N,S,S] float32 at the method's input size
    masks: np.ndarray  # [N,S,S] bool
    geometry: Preprocessing | None = None  # how images were resized/cropped for the method
    decoding: Decoding | None = None  # how the category's files were decoded (bit depth)


class Reporter:
    """Writes files from results; a reporter plugin's factory returns a subclass of this
    (``from adcore.api import Reporter``). Both hooks are optional."""

    def on_category(
        self, result: CategoryResult, outputs: CategoryOutputs | None, context: RunContext
    ) -> None:
        """Called after each category, resumed ones included (``outputs`` None then)."""

    def on_run(self, result: RunResult, context: RunContext) -> None:
        """Called once after every category is done."""


class ReporterCalls:
    """Calls every reporter's hooks, one failing reporter never stopping the others.

    A reporter that raises (a full disk while writing overlays, a broken third-party
    reporter) is recorded, and the other reporters and categories go on, so the metrics,
    scores and the summary are always written; :meth:`raise_failures` then names each
    failure in one paragraph (``OutputError``). With ``AD_DEBUG=1`` the first failure
    raises at once, with its traceback."""

    def __init__(self, reporters: list[Reporter]) -> None:
        self.reporters = reporters
        self.failures: list[str] = []

    def _call(self, where: str, call: Any) -> None:
        try:
            call()
        except Exception as error:  # any reporter failure is told after the run
            if os.environ.get("AD_DEBUG") == "1":
                raise
            self.failures.append(f"{where}: {type(error).__name__}: {error}")

    def on_category(
        self, result: CategoryResult, outputs: CategoryOutputs | None, context: RunContext
    ) -> None:
        for reporter in self.reporters:
            where = f"{type(reporter).__name__} on {result.category}"
            self._call(where, lambda r=reporter: r.on_category(result, outputs, context))

    def on_run(self, result: RunResult, context: RunContext) -> None:
        for reporter in self.reporters:
            self._call(type(reporter).__name__, lambda r=reporter: r.on_run(result, context))

    def raise_failures(self, run_dir: Path) -> None:
        """``OutputError`` naming every reporter that failed; nothing when none did."""
        from adcore.infra.errors import OutputError

        if self.failures:
            raise OutputError(
                f"{len(self.failures)} reporter call(s) failed while writing files into "
                f"{run_dir}: {'; '.join(self.failures)}. The metrics, scores and every other "
                "reporter's files are written.",
                "Fix the cause (free disk space, a writable folder, or the reporter plugin) "
                "and rerun the same command with --overwrite to write the files again, or "
                "leave the failing reporter out with --reporter.",
            )


DEFAULT_REPORTERS = "default"  # in a list of reporter names: every default reporter


def default_reporters(registry: Any) -> list[Reporter]:
    """Every reporter registered with ``default=True``, built with its default settings."""
    return [c.spec.factory(c.spec.config()) for c in registry.of_kind("reporter") if c.spec.default]


def chosen_reporters(registry: Any, names: list[str] | None) -> list[Reporter]:
    """The reporters ``evaluation.reporters`` names, in its order, each once, built with
    their default settings; None gives the default ones, and the name ``default`` in the
    list stands for them. Names were checked when the config was resolved."""
    if names is None:
        return default_reporters(registry)
    components: list[Any] = []
    for name in names:
        if name == DEFAULT_REPORTERS:
            found = [c for c in registry.of_kind("reporter") if c.spec.default]
        else:
            found = [registry.resolve("reporter", name)]
        components.extend(c for c in found if c not in components)
    return [c.spec.factory(c.spec.config()) for c in components]

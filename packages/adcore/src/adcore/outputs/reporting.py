"""The reporter contract: typed results in, files out."""

from __future__ import annotations

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

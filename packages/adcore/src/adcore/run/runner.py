"""``ad eval``: one category of one experiment is a pure unit of work.

Everything that can be refused (unknown category, a setting the method does not support,
missing data, an unwritable or foreign results folder) is refused before any model work.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adcore.config.sections import ResolvedConfig
from adcore.contracts.method import FitContext, Method
from adcore.data.loading import images_on_device, make_loader
from adcore.infra.files import ensure_writable
from adcore.infra.progress import Progress
from adcore.outputs.reporting import (
    CategoryOutputs,
    Reporter,
    ReporterCalls,
    RunContext,
    chosen_reporters,
)
from adcore.outputs.results import (
    CategoryResult,
    RunLayout,
    RunResult,
    read_category,
    refuse_other_config,
    run_result,
)
from adcore.plugins.registry import Registry
from adcore.run.category_files import write_category_files
from adcore.run.components import (
    build_dataset,
    build_method,
    check_capability,
    make_runtime,
    select_categories,
)
from adcore.run.prediction_pass import PredictionPass, run_prediction_pass
from adcore.run.preparation import CategoryData, prepare_category

if TYPE_CHECKING:
    from adcore.run.efficiency import MethodCost


@dataclass
class RunOptions:
    """What ``ad eval``'s switches ask of a run beyond its config."""

    overwrite: bool = False
    save_maps: bool = False
    save_model: bool = False
    show_progress: bool = True


class Evaluation:
    """One experiment: its config, data set, method, metrics and reporters, built once."""

    def __init__(
        self,
        config: ResolvedConfig,
        registry: Registry,
        options: RunOptions | None = None,
        progress: Progress | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        """``categories`` runs a subset without changing the config (or its fingerprint)."""
        self.config = config
        self.registry = registry
        self.options = options or RunOptions()
        self.progress = progress or Progress(enabled=False)
        base = config.base
        self.layout = RunLayout(
            base.experiment.output_root,
            config.dataset.spec.name,
            config.method.spec.name,
            base.experiment.name,
        )
        # refusals first: nothing below does model work
        check_capability(config)
        self.dataset = build_dataset(config.dataset, config.dataset_config, base.data.root)
        self.categories = select_categories(self.dataset, categories or base.data.categories)
        self.resuming = False
        self.metric_names = config.metric_names
        self.metrics = {
            name: registry.resolve("metric", qualified).spec
            for name, qualified in zip(self.metric_names, base.evaluation.metrics, strict=True)
        }
        self.reporters: list[Reporter] = chosen_reporters(registry, base.evaluation.reporters)
        self.runtime = make_runtime(config)
        self.method: Method | None = None
        self.cost: MethodCost | None = None  # parameters and FLOPs, the same for every category
        self.env: dict[str, Any] = {}

    def finished(self, category: str) -> bool:
        """Done earlier and kept; with --save-model only when its fitted state was saved."""
        kept = self.resuming and not self.options.overwrite
        unsaved = self.options.save_model and not self.layout.model_state(category).exists()
        return kept and self.layout.metrics(category).exists() and not unsaved

    def build_method(self) -> Method:
        if self.method is None:
            self.method = build_method(self.config, self.runtime)
        return self.method

    def prepare(self, category: str) -> CategoryData:
        """The seeded support set and the test samples, with bad files refused or left out."""
        return prepare_category(self.dataset, category, self.config.base.data, self.runtime.seed)

    def fit(self, category: str, prepared: CategoryData | None = None) -> Method:
        """Build the method (once) and fit it on the category's seeded support set."""
        import torch

        data = self.config.base.data
        prepared = prepared or self.prepare(category)
        support = prepared.support
        method = self.build_method()
        loader = make_loader(
            support, method.geometry, data.batch_size, data.num_workers, decoding=prepared.decoding
        )
        with (
            self.progress.task(f"{category}: fit", total=len(support)) as advance,
            torch.no_grad(),
            self.runtime.autocast(),
        ):
            method.fit(
                FitContext(
                    category=category,
                    class_name=self.dataset.class_name(category),
                    num_images=len(support),
                    batches=images_on_device(loader, self.runtime.device, advance)
                    if support
                    else [],
                    show_progress=self.options.show_progress,
                )
            )
        return method

    def write_run_files(self) -> None:
        from adcore.outputs.env import run_environment
        from adcore.run.efficiency import EVALUATION_SOURCES

        latency = self.config.base.evaluation.latency.enabled
        identity = self.build_method().weights_identity()
        self.env = run_environment(
            self.registry, self.runtime, self.config, identity,
            EVALUATION_SOURCES if latency else {},
        )  # fmt: skip
        self.layout.write_run_files(self.config, self.env)

    def run(self) -> RunResult:
        ensure_writable(self.layout.root)
        self.resuming = refuse_other_config(
            self.layout, self.config.fingerprint(), self.options.overwrite, self.config.to_dict()
        )
        pending = [c for c in self.categories if not self.finished(c)]
        # every file is checked before anything is written or any model is built
        prepared = {category: self.prepare(category) for category in pending}
        if self.options.overwrite:
            self.layout.forget_results(pending)
        if pending or not self.layout.env.exists():
            self.write_run_files()
        else:
            self.env = json.loads(self.layout.env.read_text())
        context = RunContext(self.layout, self.config, self.env)
        reporters = ReporterCalls(self.reporters)
        results = []
        for category in self.categories:
            if self.finished(category):
                result = read_category(self.layout, category, self.metric_names)
                outputs = None
                self.progress.note(f"{category}: finished earlier, kept (use --overwrite to redo)")
            else:
                result, outputs = self.run_category(category, prepared[category])
            reporters.on_category(result, outputs, context)
            results.append(result)
        run = run_result(self.config, self.layout, results, self.env)
        reporters.on_run(run, context)
        reporters.raise_failures(self.layout.root)
        return run

    def predict(self, category: str, method: Method, prepared: CategoryData) -> PredictionPass:
        """The prediction pass over the test images, with its per-batch timings."""
        data = self.config.base.data
        with self.progress.task(f"{category}: predict", total=len(prepared.test)) as advance:
            return run_prediction_pass(
                method,
                self.runtime,
                prepared.test,
                data.batch_size,
                data.num_workers,
                self.config.method.spec.name,
                advance,
                prepared.decoding,
            )

    def efficiency(
        self, category: str, method: Method, predicted: PredictionPass, peak: float
    ) -> dict[str, float]:
        """From the pass's batches and a budgeted batch-1 probe; size and FLOPs counted once."""
        from adcore.run.efficiency import count_cost, evaluation_figures

        started = time.perf_counter()
        settings = self.config.base.evaluation.latency
        sizes, seconds = predicted.batch_sizes, predicted.batch_seconds
        with self.progress.task(f"{category}: efficiency", total=None) as advance:
            if self.cost is None:
                advance(0, status="counting parameters and FLOPs")
                self.cost = count_cost(method, self.runtime)
            counting = time.perf_counter() - started
            figures = evaluation_figures(
                method, self.runtime, settings, sizes, seconds, peak, self.cost, advance
            )
        figures["efficiency_seconds"] += counting
        self.progress.note(
            f"{category}: efficiency: {figures['latency_probe_iters']:.0f} batch-1 call(s), "
            f"median {figures['latency_ms_median']:.4g} ms, {figures['efficiency_seconds']:.1f} s"
        )
        return figures

    def run_category(
        self, category: str, prepared: CategoryData
    ) -> tuple[CategoryResult, CategoryOutputs]:
        from adcore.run.efficiency import PeakMemory
        from adcore.run.scoring import evaluation_data, score_category

        started = time.perf_counter()
        evaluation = self.config.base.evaluation
        method = self.fit(category, prepared)
        test = prepared.test
        with PeakMemory(self.runtime.device) as memory:
            predicted = self.predict(category, method, prepared)
            peak, _ = memory.read()
        data = evaluation_data(
            predicted, test, method.geometry, evaluation.resolution, prepared.decoding
        )
        undefined = self.dataset.undefined_levels  # what the data set cannot support
        scored = score_category(self.metrics, data, test, predicted.masks, undefined)
        latency = evaluation.latency.enabled
        efficiency = self.efficiency(category, method, predicted, peak) if latency else {}
        result = CategoryResult(
            category=category,
            metrics=scored.values,
            efficiency=efficiency,
            num_support=len(prepared.support),
            num_test=len(test),
            num_anomalous=int(data.labels.sum()),
            num_skipped=prepared.num_skipped,
            num_vanished_masks=scored.vanished_masks,
            seconds=time.perf_counter() - started,
            notes=[*prepared.notes, *scored.notes],
        )
        write_category_files(
            self.layout, result, method, test, predicted.scores, predicted.maps,
            self.metric_names, self.options.save_maps, self.options.save_model, prepared,
        )  # fmt: skip
        for note in result.notes:
            self.progress.note(f"{category}: {note}")
        self.progress.note(result.line(self.metric_names))
        outputs = CategoryOutputs(
            test,
            predicted.scores,
            predicted.maps,
            predicted.masks,
            method.geometry,
            prepared.decoding,
        )
        return result, outputs


def evaluate(
    resolved: ResolvedConfig,
    options: RunOptions,
    show_progress: bool = True,
    on_start: Callable[[], None] | None = None,
) -> RunResult:
    """``ad eval``: every category of ``resolved`` through an :class:`Evaluation`.

    ``on_start`` is called once the run is accepted (categories found, results folder its
    own) and before any model work: what it prints never precedes a refusal.
    Raises ``Interrupted`` on Ctrl-C, naming the categories kept on disk for a resume.
    """
    from adcore.plugins.registry import get_registry

    with Progress(enabled=show_progress) as progress:
        evaluation = Evaluation(resolved, get_registry(), options, progress)
        if on_start is not None:
            on_start()
        try:
            return evaluation.run()
        except KeyboardInterrupt:
            raise evaluation.layout.interrupted(evaluation.categories) from None

"""``ad eval``: one category of one experiment is a pure unit of work.

Everything that can be refused (unknown category, a setting the method does not support,
missing data, an unwritable or foreign results folder) is refused before any model work.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from adcore.config import ResolvedConfig
from adcore.dataset import Dataset, Sample
from adcore.errors import ConfigError, DataError, PluginError
from adcore.evaldata import EvalData
from adcore.loading import make_loader, read_mask
from adcore.method import FitContext, Method, Runtime
from adcore.plugins import Component, Registry
from adcore.progress import Progress
from adcore.records import Capability, PluginConfig
from adcore.reporting import CategoryOutputs, Reporter, RunContext, default_reporters
from adcore.results import (
    CategoryResult,
    RunLayout,
    RunResult,
    atomic_write_bytes,
    atomic_write_text,
    ensure_writable,
    read_category,
    refuse_other_config,
    write_category,
    write_scores,
)
from adcore.support import choose_support


@dataclass
class CategoryData:
    """What one category is evaluated on, after the bad-file check."""

    support: list[Sample]
    test: list[Sample]
    num_skipped: int


@dataclass
class RunOptions:
    overwrite: bool = False
    save_maps: bool = False
    save_model: bool = False
    show_progress: bool = True


def resolve_device(requested: str) -> str:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"model.device={requested} but this PyTorch sees no CUDA device.",
                "Use --device cpu (or auto), or install a CUDA build of PyTorch.",
            )
        index = torch.device(requested).index or 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"model.device={requested} but only {torch.cuda.device_count()} GPU(s) exist.",
                "Pick an existing index.",
            )
    return requested


def required_capability(k_shot: int | str) -> Capability:
    if k_shot == "all":
        return Capability.FULL_SHOT
    return Capability.ZERO_SHOT if k_shot == 0 else Capability.FEW_SHOT


def check_capability(config: ResolvedConfig) -> None:
    spec = config.method.spec
    needed = required_capability(config.base.data.k_shot)
    if needed not in spec.capabilities:
        offered = ", ".join(sorted(c.value for c in spec.capabilities))
        raise PluginError(
            f"Method {spec.name!r} cannot run {needed.value} (data.k_shot="
            f"{config.base.data.k_shot}); it supports: {offered}.",
            "Change --k-shot (0 zero-shot, a count for few-shot, 'all' for full-shot) or "
            "choose another method.",
        )


def build_dataset(component: Component, settings: PluginConfig, root: Path | None) -> Dataset:
    """The data set plugin's reader, after checking that its root exists."""
    spec = component.spec
    if spec.needs_root and root is None:
        raise DataError(
            f"Data set {spec.name!r} needs a root folder, and data.root is not set.",
            "Pass --data-root PATH (or set data.root in the config).",
        )
    if root is not None and not root.expanduser().exists():
        hint = spec.download_help or "Check the path, or download the data set there first."
        raise DataError(f"The data root {root} of data set {spec.name!r} does not exist.", hint)
    return spec.factory(settings, root.expanduser() if root else None)


def select_categories(dataset: Dataset, requested: Sequence[str] | None) -> list[str]:
    available = dataset.categories()
    if not requested:
        return available
    missing = [c for c in requested if c not in available]
    if missing:
        raise DataError(
            f"Category {', '.join(missing)} not found in the data set. "
            f"Available: {', '.join(available) or 'none'}.",
            "Pick categories from that list (or leave data.categories unset for all).",
        )
    return list(requested)


def screen_samples(
    samples: list[Sample], skip: bool, require_masks: bool
) -> tuple[list[Sample], int]:
    """Check files before any model work: stop naming each bad file, or leave them out."""
    from adcore import datacheck

    bad = datacheck.find_bad_samples(samples, require_masks=require_masks)
    if not bad:
        return samples, 0
    if not skip:
        listed = "; ".join(str(b) for b in bad[:20])
        more = f" and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise DataError(
            f"{len(bad)} bad sample(s): {listed}{more}.",
            "Fix or remove those files, or rerun with --skip-bad-samples to leave them out "
            "(the count is recorded in the results).",
        )
    kept = datacheck.drop_bad_samples(samples, bad)
    return kept, len(samples) - len(kept)


def _on_device(loader: Any, device: str, advance: Any) -> Iterator[Any]:
    """Support images to the device, advancing the fit bar as the method consumes them."""
    for batch in loader:
        yield batch["image"].to(device, non_blocking=True)
        advance(len(batch["image"]))


def _crop_box(size: tuple[int, int], config: ResolvedConfig, method: Method) -> tuple[int, ...]:
    """The part of an original image that the method's centre crop keeps, in its pixels."""
    geometry = method.geometry
    width, height = size
    if geometry.crop is None:
        return (0, 0, width, height)
    fraction = geometry.crop / geometry.size
    crop_w, crop_h = round(width * fraction), round(height * fraction)
    left, top = (width - crop_w) // 2, (height - crop_h) // 2
    return (left, top, left + crop_w, top + crop_h)


def original_resolution(
    maps: np.ndarray, samples: Sequence[Sample], config: ResolvedConfig, method: Method
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Maps resized (bilinear) to each mask's own size, cropped alike."""
    import torch
    from PIL import Image

    from adcore.maps import upsample

    resized_maps, masks = [], []
    for value, sample in zip(maps, samples, strict=True):
        with Image.open(sample.image_path) as image:
            size = image.size
        mask = read_mask(sample.mask_path, size).crop(_crop_box(size, config, method))
        target = np.asarray(mask, dtype=bool)  # [H,W]
        resized_maps.append(upsample(torch.from_numpy(value)[None], target.shape)[0].numpy())
        masks.append(target)
    return resized_maps, masks


def write_map(path: Any, value: np.ndarray) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(value.astype(np.float32), mode="F").save(buffer, format="TIFF")
    atomic_write_bytes(path, buffer.getvalue())


def efficiency_figures(
    method: Method, runtime: Runtime, config: ResolvedConfig
) -> dict[str, float]:
    from adcore.efficiency import RESULT_COLUMNS, measure_efficiency

    latency = config.base.evaluation.latency
    figures = measure_efficiency(
        method,
        runtime,
        warmup_iters=latency.warmup_iters,
        measure_iters=latency.measure_iters,
        throughput_batch=latency.throughput_batch,
    )
    values = figures.as_numbers()
    return {k: values[k] for k in RESULT_COLUMNS if k in values}


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
        self.reporters: list[Reporter] = default_reporters(registry)
        self.runtime = Runtime(
            device=resolve_device(base.model.device),
            precision=base.model.precision,
            seed=base.experiment.seed,
        )
        self.method: Method | None = None
        self.env: dict[str, Any] = {}

    def finished(self, category: str) -> bool:
        return (
            self.resuming and not self.options.overwrite and self.layout.metrics(category).exists()
        )

    def build_method(self) -> Method:
        if self.method is None:
            self.method = build_method(self.config, self.runtime)
        return self.method

    def prepare(self, category: str) -> CategoryData:
        """The seeded support set and the test samples, with bad files refused or left out."""
        data = self.config.base.data
        train = self.dataset.samples(category, "train")
        support = choose_support(train, data.k_shot, self.runtime.seed, category)
        support, skipped_support = screen_samples(
            support, data.skip_bad_samples, self.dataset.requires_masks
        )
        test, skipped_test = screen_samples(
            self.dataset.samples(category, "test"),
            data.skip_bad_samples,
            self.dataset.requires_masks,
        )
        if not test:
            raise DataError(
                f"Category {category!r} has no usable test images.", "Check the data set."
            )
        return CategoryData(support, test, skipped_support + skipped_test)

    def fit(self, category: str, prepared: CategoryData | None = None) -> Method:
        """Build the method (once) and fit it on the category's seeded support set."""
        import torch

        data = self.config.base.data
        support = (prepared or self.prepare(category)).support
        method = self.build_method()
        loader = make_loader(support, method.geometry, data.batch_size, data.num_workers)
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
                    batches=_on_device(loader, self.runtime.device, advance) if support else [],
                    show_progress=self.options.show_progress,
                )
            )
        return method

    def write_run_files(self) -> None:
        from adcore.env import environment

        method = self.build_method()
        evaluation = self.config.base.evaluation
        identity = method.weights_identity()
        self.env = {
            **environment(self.registry, self.runtime.device),
            "seed": self.runtime.seed,
            "precision": self.runtime.precision,
            "weights": identity,
            # random anywhere (backbone, or untrained parts without a checkpoint) marks the run
            "random_weights": self.config.random_weights or bool(identity.get("random")),
            "evaluation_resolution": evaluation.resolution,
            "skip_bad_samples": self.config.base.data.skip_bad_samples,
            "fingerprint": self.config.fingerprint(),
        }
        atomic_write_text(
            self.layout.config, yaml.safe_dump(self.config.to_dict(), sort_keys=False)
        )
        atomic_write_text(self.layout.env, json.dumps(self.env, indent=2, default=str) + "\n")
        atomic_write_text(self.layout.root / ".fingerprint", self.config.fingerprint() + "\n")

    def run(self) -> RunResult:
        ensure_writable(self.layout.root)
        self.resuming = refuse_other_config(
            self.layout, self.config.fingerprint(), self.options.overwrite
        )
        pending = [c for c in self.categories if not self.finished(c)]
        # every file is checked before anything is written or any model is built
        prepared = {category: self.prepare(category) for category in pending}
        if pending or not self.layout.env.exists():
            self.write_run_files()
        else:
            self.env = json.loads(self.layout.env.read_text())
        context = RunContext(self.layout, self.config, self.env)
        results = []
        for category in self.categories:
            if self.finished(category):
                result = read_category(self.layout, category, self.metric_names)
                outputs = None
                self.progress.note(f"{category}: finished earlier, kept (use --overwrite to redo)")
            else:
                result, outputs = self.run_category(category, prepared[category])
            for reporter in self.reporters:
                reporter.on_category(result, outputs, context)
            results.append(result)
        run = run_result(self.config, self.layout, results, self.env)
        for reporter in self.reporters:
            reporter.on_run(run, context)
        return run

    def run_category(
        self, category: str, prepared: CategoryData
    ) -> tuple[CategoryResult, CategoryOutputs]:
        import torch

        started = time.perf_counter()
        data = self.config.base.data
        method = self.fit(category, prepared)
        test = prepared.test
        geometry = method.geometry
        workers = data.num_workers

        size = geometry.output_size
        scores = np.empty(len(test), dtype=np.float64)
        maps = np.empty((len(test), size, size), dtype=np.float32)
        masks = np.empty((len(test), size, size), dtype=bool)
        loader = make_loader(test, geometry, data.batch_size, workers)
        with self.progress.task(f"{category}: predict", total=len(test)) as advance:
            for batch in loader:
                images = batch["image"].to(self.runtime.device, non_blocking=True)
                with torch.no_grad(), self.runtime.autocast():
                    prediction = method.predict(images)
                index = batch["index"].numpy()
                batch_maps = prediction.maps.float().cpu().numpy()
                expected = (len(index), size, size)
                if batch_maps.shape != expected or prediction.scores.shape != (len(index),):
                    raise PluginError(
                        f"Method {self.config.method.spec.name!r} returned scores "
                        f"{tuple(prediction.scores.shape)} and maps {batch_maps.shape}; "
                        f"expected ({len(index)},) and {expected}.",
                        "This is a bug in the method plugin; report it to its authors.",
                    )
                scores[index] = prediction.scores.float().cpu().numpy()
                maps[index] = batch_maps
                masks[index] = batch["mask"].numpy().astype(bool)
                advance(len(index))

        labels = np.array([s.label for s in test])
        if self.config.base.evaluation.resolution == "original":
            eval_maps, eval_masks = original_resolution(maps, test, self.config, method)
        else:
            eval_maps, eval_masks = maps, masks
        eval_data = EvalData(scores=scores, labels=labels, maps=eval_maps, masks=eval_masks)
        undefined = undefined_levels(self.dataset, test)
        values = {
            name: math.nan
            if spec.level in undefined
            else float(spec.factory(spec.config())(eval_data))
            for name, spec in self.metrics.items()
        }
        notes = [f"{level} metrics n/a: {why}" for level, why in undefined.items()]
        for note in notes:
            self.progress.note(f"{category}: {note}")
        efficiency: dict[str, float] = {}
        if self.config.base.evaluation.latency.enabled:
            self.progress.note(f"{category}: measuring latency, throughput and FLOPs")
            efficiency = efficiency_figures(method, self.runtime, self.config)

        result = CategoryResult(
            category=category,
            metrics=values,
            efficiency=efficiency,
            num_support=len(prepared.support),
            num_test=len(test),
            num_anomalous=int(labels.sum()),
            num_skipped=prepared.num_skipped,
            seconds=time.perf_counter() - started,
            notes=notes,
        )
        if self.options.save_maps:
            for value, sample in zip(maps, test, strict=True):
                write_map(self.layout.map_path(category, sample), value)
        if self.options.save_model:
            save_fitted_state(method, self.layout.model_state(category))
        write_scores(self.layout, category, test, scores)
        write_category(self.layout, result, self.metric_names)
        self.progress.note(_category_line(result, self.metric_names))
        return result, CategoryOutputs(test, scores, maps, masks, geometry)


def undefined_levels(dataset: Dataset, test: Sequence[Sample]) -> dict[str, str]:
    """Metric levels that cannot be computed on ``test``, each with the reason.

    The data set declares what it lacks (``Dataset.undefined_levels``); without a mask for
    every anomalous image, pixel metrics would be wrong, so they are left out too.
    """
    undefined = dict(getattr(dataset, "undefined_levels", {}))
    if "pixel" not in undefined and any(s.mask_path is None for s in test if s.label == 1):
        undefined["pixel"] = "anomalous images without masks"
    return undefined


def run_result(
    config: ResolvedConfig, layout: RunLayout, results: list[CategoryResult], env: dict[str, Any]
) -> RunResult:
    """A run's categories as one result; ``env.json`` knows whether any weights were random."""
    return RunResult(
        run_dir=layout.root,
        dataset=config.dataset.spec.name,
        method=config.method.spec.name,
        experiment=config.base.experiment.name,
        metric_names=config.metric_names,
        categories=results,
        random_weights=bool(env.get("random_weights", config.random_weights)),
    )


def build_method(config: ResolvedConfig, runtime: Runtime) -> Method:
    """The config's method, seeded first so random initialisation is the same everywhere."""
    import torch

    torch.manual_seed(runtime.seed)
    return config.method.spec.factory(config.method_config, runtime)


def read_fitted_state(path: Path) -> dict[str, Any]:
    """What ``save_fitted_state`` wrote, loaded safely (``weights_only=True``)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)


def save_fitted_state(method: Method, path: Any) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(method.fitted_state(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _category_line(result: CategoryResult, metric_names: Sequence[str]) -> str:
    shown = ", ".join(f"{n} {100 * result.metrics[n]:.1f}" for n in metric_names)
    return f"{result.category}: {shown} ({result.seconds:.1f} s)"

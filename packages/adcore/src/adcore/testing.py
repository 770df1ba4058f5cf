"""Contract checks for plugin authors, usable from pytest (or any script).

Each ``check_*`` builds the component from its record the way the host does and fails with
a :class:`ContractError` (an ``AssertionError``, so pytest shows it as a failed test) that
names the rule broken and how to keep it. The project's own contract test runs these on
every installed component; a plugin's tests run them on its own records::

    from adcore.testing import check_method
    from my_plugin import adcore_methods

    def test_contract():
        for spec in adcore_methods():
            check_method(spec)

Methods are built from ``spec.smoke_config`` (tiny backbone, random weights) on the CPU,
so a check takes seconds and never downloads.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from adcore.contracts.records import (
    Capability,
    ComponentSpec,
    DatasetSpec,
    MethodSpec,
    MetricSpec,
    PluginConfig,
    ReporterSpec,
)

if TYPE_CHECKING:
    import torch

    from adcore.contracts.dataset import Dataset
    from adcore.contracts.method import Method, TransductiveMethod


class ContractError(AssertionError):
    """A component breaks the plugin contract; the message says which rule and the fix."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def check_config(config: type[BaseModel], name: str = "component") -> None:
    """The settings model is a :class:`PluginConfig` whose unknown keys are errors."""
    _require(
        isinstance(config, type) and issubclass(config, PluginConfig),
        f"{name}: config must subclass adcore.api.PluginConfig (got {config!r}).",
    )
    try:
        config.model_validate({"no_such_key_for_the_contract_check": 1})
    except ValidationError:
        return
    raise ContractError(
        f"{name}: config {config.__name__} accepts unknown keys; keep extra='forbid'."
    )


def _images(count: int, size: int, seed: int) -> torch.Tensor:
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


def _build_method(spec: MethodSpec, overrides: dict[str, Any] | None, device: str) -> Method:
    import torch

    from adcore.contracts.method import Method, Runtime

    values = {**spec.smoke_config, **(overrides or {})}
    try:
        config = spec.config.model_validate(values)
    except ValidationError as error:
        raise ContractError(
            f"{spec.name}: smoke_config is not valid for its config: {error}"
        ) from None
    torch.manual_seed(0)
    method = spec.factory(config, Runtime(device=device, seed=0))
    _require(
        isinstance(method, Method),
        f"{spec.name}: factory(config, runtime) returned {type(method).__name__}, "
        "not an adcore.api.Method.",
    )
    return method


def _fit(method: Method, spec: MethodSpec, size: int) -> None:
    import torch

    from adcore.contracts.method import FitContext

    zero_shot = Capability.ZERO_SHOT in spec.capabilities
    support = [] if zero_shot else [_images(2, size, seed=1)]  # [2,3,S,S] uint8
    with torch.no_grad():
        method.fit(FitContext("thing", "thing", sum(len(b) for b in support), iter(support)))


def _overrides(method: Method, name: str) -> bool:
    from adcore.contracts.method import Method as Base

    return getattr(type(method), name) is not getattr(Base, name)


def check_method(
    spec: MethodSpec,
    config: dict[str, Any] | None = None,
    device: str = "cpu",
    efficiency: bool = True,
) -> Method:
    """Build, fit and predict a method as the host does; returns the fitted method.

    Checks, each with its own message: the record and its config; ``predict`` of uint8
    ``[B,3,S,S]`` gives finite ``scores [B]`` and ``maps [B,S,S]`` at
    ``geometry.output_size``; scores do not depend on the batch they come in (batch-norm in
    eval mode, no cross-image state); ``weights_identity()`` is a
    :class:`adcore.api.WeightsIdentity` dict (its ``random_backbone`` is how
    ``--random-weights`` is reported: only config fields named ``pretrained``, or marked
    ``json_schema_extra={"weights": True}``, receive ``none``); ``modules()`` holds the
    networks, and a method that does not declare ``trainable`` has no parameter with
    ``requires_grad`` (trainable parameters are counted that way: freeze what you do not
    train); ``memory_bank_bytes() >= 0``; a method that overrides ``fitted_state`` (needed
    by ``--save-model`` and ``ad predict``) restores it into a fresh instance with equal
    predictions; and, with ``efficiency``, the host's probe runs and the method does at
    least its backbone's work. ``config`` overrides ``spec.smoke_config``.
    """
    from adcore.contracts.method import TransductiveMethod

    _require(isinstance(spec, MethodSpec), f"{spec!r} is not a MethodSpec.")
    check_config(spec.config, spec.name)
    method = _build_method(spec, config, device)
    size = method.geometry.output_size
    _fit(method, spec, size)
    images = _images(3, size, seed=2)  # [3,3,S,S] uint8
    declared = Capability.TRANSDUCTIVE in spec.capabilities
    _require(
        declared == isinstance(method, TransductiveMethod),
        f"{spec.name}: declare Capability.TRANSDUCTIVE exactly when the method is an "
        "adcore.api.TransductiveMethod (it scores the test set jointly through predict_set).",
    )
    probe, probed = _check_predictions(spec, method, images, size)
    _check_export(spec, method, images)
    _check_identity_and_modules(spec, method)
    if _overrides(method, "fitted_state"):
        _check_fitted_state(spec, method, config, device, probe, probed)
    if efficiency:
        _check_efficiency(spec, method, device)
    return method


def _check_predictions(
    spec: MethodSpec, method: Method, images: torch.Tensor, size: int
) -> tuple[torch.Tensor, Any]:
    """Shapes, finiteness and batch independence of ``predict`` (a transductive method's
    set independence of its batching); returns images and their prediction to compare
    after a fitted-state round trip."""
    import torch

    from adcore.contracts.method import Prediction, TransductiveMethod

    with torch.no_grad():
        prediction = method.predict(images)
        single = method.predict(images[1:2])
    _require(
        isinstance(prediction, Prediction),
        f"{spec.name}: predict must return adcore.api.Prediction, got {type(prediction)}.",
    )
    _require(
        tuple(prediction.scores.shape) == (3,) and tuple(prediction.maps.shape) == (3, size, size),
        f"{spec.name}: predict of 3 images at {size} px gave scores "
        f"{tuple(prediction.scores.shape)} and maps {tuple(prediction.maps.shape)}; "
        f"expected (3,) and (3, {size}, {size}).",
    )
    _require(
        bool(torch.isfinite(prediction.scores).all() and torch.isfinite(prediction.maps).all()),
        f"{spec.name}: predict gave NaN or infinite scores or maps.",
    )
    if isinstance(method, TransductiveMethod):
        return _check_set(spec, method, images, prediction)
    _require(
        torch.allclose(single.scores[0], prediction.scores[1], rtol=1e-4, atol=1e-5),
        f"{spec.name}: an image scores {float(single.scores[0]):.6g} alone but "
        f"{float(prediction.scores[1]):.6g} in a batch; scores must not depend on the batch "
        "(put batch-norm layers in eval mode, keep no state across images).",
    )
    return images[1:2], single


def _check_set(
    spec: MethodSpec, method: TransductiveMethod, images: torch.Tensor, prediction: Any
) -> tuple[torch.Tensor, Any]:
    """A set scores the same however the host batches it; returns the set and its scores."""
    import torch

    with torch.no_grad():
        split = method.predict_set(iter([images[:1], images[1:]]), len(images))
    _require(
        torch.allclose(split.scores, prediction.scores, rtol=1e-4, atol=1e-5)
        and torch.allclose(split.maps, prediction.maps, rtol=1e-4, atol=1e-5),
        f"{spec.name}: a set of 3 images scores differently when handed over as batches of "
        "1 and 2; predict_set must score the set, whatever its batches.",
    )
    return images, prediction


def _check_export(spec: MethodSpec, method: Method, images: torch.Tensor) -> None:
    """A method declaring ``exportable`` is an ExportableMethod whose module computes what
    ``predict`` computes (to ``ad export``'s fp32 parity bar) and traces with the batch
    size free (``torch.export``, as ``ad export`` does)."""
    import torch

    from adcore.contracts.method import ExportableMethod
    from adcore.run.export import FP32_PARITY, max_relative_difference

    if Capability.EXPORTABLE not in spec.capabilities:
        return
    _require(
        isinstance(method, ExportableMethod),
        f"{spec.name}: the record declares Capability.EXPORTABLE, but the method is not an "
        "adcore.api.ExportableMethod (export_module returns its fitted prediction as a module).",
    )
    assert isinstance(method, ExportableMethod)
    with torch.no_grad():
        expected = method.predict(images)
        module = method.export_module().eval()
        normalised = method.geometry.normalize(images)
        scores, maps = module(normalised)
        try:
            traced = torch.export.export(
                module, (normalised,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},)
            ).module()
            one = traced(normalised[:1])[0]
        except Exception as error:  # torch.export's many error types
            first = str(error).strip().splitlines()[0] if str(error).strip() else ""
            raise ContractError(
                f"{spec.name}: export_module does not trace with the batch size free "
                f"(torch.export: {type(error).__name__}: {first[:300]}); use tensor operations "
                "only, x.shape[0] rather than len(x), no faiss or numpy, no Python loop over "
                "the batch."
            ) from error
    for what, ours, reference in (
        ("scores", scores, expected.scores),
        ("maps", maps, expected.maps),
        ("traced scores of one image", one, expected.scores[:1]),
    ):
        difference = max_relative_difference(
            ours.float().cpu().numpy(), reference.float().cpu().numpy()
        )
        _require(
            tuple(ours.shape) == tuple(reference.shape) and difference <= FP32_PARITY,
            f"{spec.name}: export_module's {what} differ from predict's by {difference:.3g} "
            f"(shape {tuple(ours.shape)} vs {tuple(reference.shape)}; the limit is "
            f"{FP32_PARITY:g} of the largest value); it must compute what predict computes.",
        )


def _check_identity_and_modules(spec: MethodSpec, method: Method) -> None:
    """The weights identity format, ``modules()``, frozen parameters, the memory bank."""
    from torch import nn

    from adcore.run.efficiency import count_parameters
    from adcore.toolkit.weights import WeightsIdentity

    identity = method.weights_identity()
    try:
        WeightsIdentity.model_validate(identity)
    except (ValidationError, TypeError) as error:
        raise AssertionError(
            f"{spec.name}: weights_identity() must be the one identity format "
            f"(adcore.api.WeightsIdentity; build it with adcore.api.backbone_identity): {error}"
        ) from None
    modules = method.modules()
    _require(
        isinstance(modules, dict) and all(isinstance(m, nn.Module) for m in modules.values()),
        f"{spec.name}: modules() must return a dict of torch.nn.Module.",
    )
    _, trainable = count_parameters(method)
    _require(
        Capability.TRAINABLE in spec.capabilities or trainable == 0,
        f"{spec.name}: {trainable} parameters have requires_grad=True but the method does not "
        "declare 'trainable'; they would be reported as trainable. Freeze them "
        "(module.requires_grad_(False)).",
    )
    _require(method.memory_bank_bytes() >= 0, f"{spec.name}: memory_bank_bytes() is negative.")


def _check_efficiency(spec: MethodSpec, method: Method, device: str) -> None:
    """The host's probe runs, and the method does at least its backbone's work."""
    from adcore.contracts.method import Runtime
    from adcore.run.efficiency import measure_backbone, measure_efficiency

    runtime = Runtime(device=device, seed=0)
    figures = measure_efficiency(
        method, runtime, warmup_iters=0, measure_iters=1, throughput_batch=2
    )
    backbone = measure_backbone(method, runtime, warmup_iters=0, measure_iters=1)
    _require(
        figures.latency_ms_median > 0 and figures.throughput_ips > 0,
        f"{spec.name}: the efficiency probe measured no time.",
    )
    _require(
        figures.gflops >= backbone.gflops,
        f"{spec.name}: predict counts {figures.gflops:.3g} GFLOPs, less than its "
        f"backbone_forward ({backbone.gflops:.3g}); backbone_forward must be the bare "
        "backbone predict runs.",
    )


def _check_fitted_state(
    spec: MethodSpec,
    method: Method,
    config: dict[str, Any] | None,
    device: str,
    images: torch.Tensor,
    prediction: Any,
) -> None:
    """A fresh instance loaded with ``fitted_state()`` predicts ``images`` as ``prediction``."""
    import torch

    _require(
        _overrides(method, "load_fitted_state"),
        f"{spec.name}: fitted_state is implemented but load_fitted_state is not.",
    )
    fresh = _build_method(spec, config, device)
    fresh.load_fitted_state(method.fitted_state())
    with torch.no_grad():
        restored = fresh.predict(images)
    _require(
        torch.allclose(restored.scores, prediction.scores, rtol=1e-4, atol=1e-5)
        and torch.allclose(restored.maps, prediction.maps, rtol=1e-4, atol=1e-5),
        f"{spec.name}: a fresh method loaded with fitted_state() predicts differently; "
        "fitted_state must hold everything predict needs after fit.",
    )


def check_dataset(
    spec: DatasetSpec, root: Path | None = None, config: dict[str, Any] | None = None
) -> Dataset | None:
    """The record and its config; with a ``root`` (or a data set that needs none), the data
    set's categories and samples: sorted, of that category, labels 0/1, train all normal,
    a mask for every anomalous test image when ``requires_masks``, every path present, and
    what ``data_files`` reports for the inventory a ``DataFiles``.
    Returns the data set, or None when it could not be read without a root."""
    from adcore.contracts.dataset import DataFiles, Dataset, Sample

    _require(isinstance(spec, DatasetSpec), f"{spec!r} is not a DatasetSpec.")
    check_config(spec.config, spec.name)
    if root is None and spec.needs_root:
        return None
    dataset = spec.factory(spec.config.model_validate(config or {}), root)
    _require(isinstance(dataset, Dataset), f"{spec.name}: factory did not return a Dataset.")
    categories = dataset.categories()
    _require(
        bool(categories) and all(isinstance(c, str) for c in categories),
        f"{spec.name}: categories() must list category names (got {categories!r}).",
    )
    for category in categories:
        _require(isinstance(dataset.class_name(category), str), f"{spec.name}: class_name")
        files = dataset.data_files(category)
        _require(
            isinstance(files, DataFiles),
            f"{spec.name}: data_files({category!r}) must return a DataFiles (got {files!r}).",
        )
        for split in ("train", "test"):
            samples = dataset.samples(category, split)
            where = f"{spec.name}: {category}/{split}"
            _require(all(isinstance(s, Sample) for s in samples), f"{where}: not Samples.")
            paths = [s.image_path for s in samples]
            _require(paths == sorted(paths), f"{where}: samples must be sorted by path.")
            for sample in samples:
                _require(sample.category == category, f"{where}: {sample} of another category.")
                _require(sample.label in (0, 1), f"{where}: label {sample.label} is not 0/1.")
                _require(sample.image_path.exists(), f"{where}: {sample.image_path} missing.")
                _require(
                    split == "test" or sample.label == 0,
                    f"{where}: train samples must be normal ({sample.image_path}).",
                )
                _require(
                    sample.label == 0 or sample.mask_path is not None or not dataset.requires_masks,
                    f"{where}: anomalous {sample.image_path} has no mask but requires_masks is "
                    "set; give its mask_path or set requires_masks = False.",
                )
    return dataset


def check_metric(spec: MetricSpec) -> None:
    """A float from ``EvalData``; a perfect ranking scores 1 on a higher-is-better metric and
    strictly better than the reversed ranking."""
    import numpy as np

    from adcore.metrics.evaldata import EvalData

    _require(isinstance(spec, MetricSpec), f"{spec!r} is not a MetricSpec.")
    check_config(spec.config, spec.name)
    compute = spec.factory(spec.config())
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    masks[2:, 4:9, 4:9] = True
    noise = rng.random((4, 16, 16)) * 0.5
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    good = compute(EvalData(scores=scores, labels=labels, maps=noise + masks, masks=masks))
    bad = compute(EvalData(scores=-scores, labels=labels, maps=noise - masks, masks=masks))
    _require(isinstance(good, float), f"{spec.name}: compute must return a float, got {good!r}.")
    if spec.higher_is_better:
        _require(abs(good - 1.0) < 1e-9, f"{spec.name}: a perfect ranking gives {good}, not 1.")
        _require(good > bad, f"{spec.name}: the reversed ranking scores as high ({bad}).")
    else:
        _require(good < bad, f"{spec.name}: lower is better, but the reversed ranking is lower.")


def check_reporter(spec: ReporterSpec) -> None:
    """The record, its config, and a factory that builds a
    :class:`adcore.outputs.reporting.Reporter`."""
    from adcore.outputs.reporting import Reporter

    _require(isinstance(spec, ReporterSpec), f"{spec!r} is not a ReporterSpec.")
    check_config(spec.config, spec.name)
    reporter = spec.factory(spec.config())
    _require(
        isinstance(reporter, Reporter),
        f"{spec.name}: factory returned {type(reporter).__name__}, not a Reporter; subclass "
        "adcore.api.Reporter (`from adcore.api import Reporter`) and override on_category "
        "and/or on_run.",
    )


CHECKS = {
    "method": check_method,
    "dataset": check_dataset,
    "metric": check_metric,
    "reporter": check_reporter,
}


def check_component(spec: ComponentSpec) -> Any:
    """Run the check of the record's kind with its defaults."""
    return CHECKS[spec.kind](spec)


def check_records(records: Iterable[ComponentSpec]) -> None:
    """Check every record a hook returned, e.g. ``check_records(adcore_methods())``."""
    records = list(records)
    _require(bool(records), "the hook returned no records.")
    for record in records:
        check_component(record)

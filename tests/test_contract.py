"""Every registered component passes the same contract test.

Parametrised over the live registry, so a newly installed plugin is tested without anyone
writing a test for it; the meta-test fails when a hook kind has no contract test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adcore import hookspecs
from adcore.efficiency import measure_backbone, measure_efficiency
from adcore.evaldata import EvalData
from adcore.method import FitContext, Method, Prediction, Runtime
from adcore.plugins import HOOKS, get_registry
from adcore.records import Capability, PluginConfig
from adcore.reporting import Reporter
from adcore.weights import WeightsIdentity

REGISTRY = get_registry()
CONTRACTS = {"method", "dataset", "metric", "reporter"}


def _components(kind: str):
    return pytest.mark.parametrize(
        "component", REGISTRY.of_kind(kind), ids=lambda c: c.qualified_name
    )


def test_every_hook_kind_has_a_contract_test():
    hook_names = {name for name in dir(hookspecs) if name.startswith("adcore_")}
    assert hook_names == {hook for hook, _ in HOOKS.values()}
    assert set(HOOKS) == CONTRACTS


def test_every_installed_plugin_loads():
    broken = {p.distribution: p.error for p in REGISTRY.plugins if p.status != "ok"}
    assert broken == {}


def _config_forbids_extra(component) -> None:
    config = component.spec.config
    assert issubclass(config, PluginConfig)
    with pytest.raises(ValueError):
        config.model_validate({"no_such_key": 1})


def _images(count: int, size: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, size, size), generator=generator, dtype=torch.uint8)


@_components("method")
def test_method_contract(component):
    spec = component.spec
    _config_forbids_extra(component)
    config = spec.config.model_validate(spec.smoke_config)
    torch.manual_seed(0)
    method = spec.factory(config, Runtime(device="cpu", seed=0))
    assert isinstance(method, Method)
    size = method.geometry.output_size
    zero_shot = Capability.ZERO_SHOT in spec.capabilities
    support = [] if zero_shot else [_images(2, size, seed=1)]
    with torch.no_grad():
        method.fit(FitContext("thing", "thing", sum(len(b) for b in support), iter(support)))
        prediction = method.predict(_images(3, size, seed=2))
    assert isinstance(prediction, Prediction)
    assert prediction.scores.shape == (3,)
    assert prediction.maps.shape == (3, size, size)
    assert torch.isfinite(prediction.scores).all() and torch.isfinite(prediction.maps).all()
    identity = method.weights_identity()
    WeightsIdentity.model_validate(identity)  # the one identity format
    runtime = Runtime(device="cpu", seed=0)
    figures = measure_efficiency(method, runtime, warmup_iters=0, measure_iters=1,
                                 throughput_batch=2)  # fmt: skip
    backbone = measure_backbone(method, runtime, warmup_iters=0, measure_iters=1)
    assert figures.latency_ms_median > 0 and figures.throughput_ips > 0
    assert figures.gflops >= backbone.gflops  # a method does at least its backbone's work
    assert isinstance(method.modules(), dict)
    assert method.memory_bank_bytes() >= 0


@_components("dataset")
def test_dataset_contract(component):
    _config_forbids_extra(component)
    assert component.spec.needs_root or component.spec.name == "synthetic"


@_components("metric")
def test_metric_contract(component):
    spec = component.spec
    compute = spec.factory(spec.config())
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 16, 16), bool)
    masks[2:, 4:9, 4:9] = True
    maps = rng.random((4, 16, 16)) * 0.5 + masks  # every defect pixel above every normal one
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.8, 0.9])
    value = compute(EvalData(scores=scores, labels=labels, maps=maps, masks=masks))
    assert isinstance(value, float)
    if spec.higher_is_better:
        assert value == pytest.approx(1.0)


@_components("reporter")
def test_reporter_contract(component):
    _config_forbids_extra(component)
    assert isinstance(component.spec.factory(component.spec.config()), Reporter)

"""``adcore.testing`` fails, with its rule named, on methods that break the contract."""

from __future__ import annotations

import pytest
import torch

from ad_plugin_example import PixelGaussianConfig
from ad_plugin_example.model import PixelGaussian
from adcore.api import Capability, MethodSpec, Prediction
from adcore.testing import ContractError, check_method, check_metric, check_records


class UnfrozenHead(PixelGaussian):
    """Holds a network it never trains, with requires_grad left on."""

    def __init__(self, config, runtime) -> None:
        super().__init__(config, runtime)
        self.head = torch.nn.Linear(4, 4)

    def modules(self):
        return {"head": self.head}


class BatchDependent(PixelGaussian):
    """Standardises each batch by its own statistics: an image's score depends on the others."""

    def predict(self, images):
        prediction = super().predict(images)
        maps = prediction.maps - prediction.maps.mean(0, keepdim=True)  # [B,S,S]
        return Prediction(scores=maps.flatten(1).amax(1), maps=maps)


class ForgetfulState(PixelGaussian):
    """Saves only the mean: a restored instance predicts with the wrong variance."""

    def fitted_state(self):
        return {"mean": self.mean}

    def load_fitted_state(self, state):
        self.mean = state["mean"]
        self.var = torch.ones_like(self.mean)


def _spec(factory) -> MethodSpec:
    return MethodSpec(
        name="broken", summary="breaks a rule", config=PixelGaussianConfig, factory=factory,
        capabilities={Capability.FEW_SHOT}, smoke_config={"resolution": 16, "blur": 1},
    )  # fmt: skip


@pytest.mark.parametrize(
    ("factory", "rule"),
    [
        (UnfrozenHead, "requires_grad=True but the method does not declare 'trainable'"),
        (BatchDependent, "scores must not depend on the batch"),
        (ForgetfulState, "loaded with fitted_state() predicts differently"),
    ],
)
def test_check_method_names_the_broken_rule(factory, rule):
    with pytest.raises(ContractError, match=rule.replace("(", r"\(").replace(")", r"\)")):
        check_method(_spec(factory), efficiency=False)


class LooseExport(PixelGaussian):
    """Exports a graph that forgets the blur: its maps are not predict's."""

    def export_module(self):
        from ad_plugin_example.model import PixelGaussianGraph

        return PixelGaussianGraph(self.mean, self.var, 3)  # the smoke settings blur 1


class BatchFixedExport(PixelGaussian):
    """Exports a module that only works for the batch size it was traced with."""

    def export_module(self):
        graph = super().export_module()

        class Fixed(torch.nn.Module):
            def forward(self, x):
                return graph(x.reshape(3, *x.shape[1:]))

        return Fixed()


@pytest.mark.parametrize(
    ("factory", "rule"),
    [
        (LooseExport, "export_module's scores differ from predict's"),
        (BatchFixedExport, "does not trace with the batch size free"),
    ],
)
def test_check_method_checks_a_declared_export(factory, rule):
    spec = _spec(factory).model_copy(
        update={"capabilities": frozenset({Capability.FEW_SHOT, Capability.EXPORTABLE})}
    )
    with pytest.raises(ContractError, match=rule):
        check_method(spec, efficiency=False)


def test_check_method_passes_the_unbroken_method():
    method = check_method(_spec(PixelGaussian))
    assert method.geometry.output_size == 16


def test_check_metric_catches_a_metric_that_ignores_the_ranking():
    from adcore.api import MetricSpec

    constant = MetricSpec(
        name="constant", summary="always 1", level="image", factory=lambda c: lambda d: 1.0
    )
    with pytest.raises(ContractError, match="reversed ranking"):
        check_metric(constant)


def test_check_records_refuses_an_empty_hook():
    with pytest.raises(ContractError, match="no records"):
        check_records([])

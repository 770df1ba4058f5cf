"""Every registered component passes the same contract test.

Parametrised over the live registry, so a newly installed plugin is tested without anyone
writing a test for it; the meta-test fails when a hook kind has no contract test. The checks
themselves are the public :mod:`adcore.testing`, which plugin authors run on their own records.
"""

from __future__ import annotations

import pytest

from adcore.contracts import hookspecs
from adcore.plugins.registry import HOOKS, get_registry
from adcore.testing import check_dataset, check_method, check_metric, check_reporter

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


@_components("method")
def test_method_contract(component):
    check_method(component.spec)


@_components("dataset")
def test_dataset_contract(component):
    check_dataset(component.spec)
    assert component.spec.needs_root or component.spec.name == "synthetic"


@_components("metric")
def test_metric_contract(component):
    check_metric(component.spec)


@_components("reporter")
def test_reporter_contract(component):
    check_reporter(component.spec)

"""A run's parts built from its resolved config, one way for every command.

``ad eval``, ``predict``, ``bench``, ``train`` and ``sweep`` all get their runtime, method
and data set here, so a method is seeded, placed and refused the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from adcore.config.sections import ResolvedConfig
from adcore.contracts.dataset import Dataset
from adcore.contracts.method import Method, Runtime
from adcore.contracts.records import Capability, PluginConfig
from adcore.infra.device import resolve_device
from adcore.infra.errors import DataError, PluginError
from adcore.infra.suggest import did_you_mean
from adcore.plugins.registry import Component


def make_runtime(config: ResolvedConfig, device: str | None = None) -> Runtime:
    """Device (``device`` overrides ``model.device``), precision and seed of a run."""
    return Runtime(
        device=resolve_device(device or config.base.model.device),
        precision=config.base.model.precision,
        seed=config.base.experiment.seed,
    )


def build_method(config: ResolvedConfig, runtime: Runtime) -> Method:
    """The config's method, seeded first so random initialisation is the same everywhere."""
    import torch

    torch.manual_seed(runtime.seed)
    return config.method.spec.factory(config.method_config, runtime)


def required_capability(k_shot: int | str) -> Capability:
    """What ``data.k_shot`` asks of a method: 0 zero-shot, a count few-shot, all full-shot."""
    if k_shot == "all":
        return Capability.FULL_SHOT
    return Capability.ZERO_SHOT if k_shot == 0 else Capability.FEW_SHOT


def check_capability(config: ResolvedConfig) -> None:
    """Refuse a setting the method does not support, before any model work."""
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
    """The requested categories (all when none), each checked against the data set."""
    available = dataset.categories()
    if not requested:
        return available
    missing = [c for c in requested if c not in available]
    if missing:
        raise DataError(
            f"Category {', '.join(missing)} not found in the data set."
            + "".join(did_you_mean(c, available, lead=f" {c}: did you mean") for c in missing)
            + f" Available: {', '.join(available) or 'none'}.",
            "Pick categories from that list (or leave data.categories unset for all).",
        )
    return list(requested)

"""Resolution: the config's plugins found in the registry and their own settings validated.

The ``model`` and ``data`` sections carry the chosen plugin's own fields, validated by that
plugin's config model once the plugin is known."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from adcore.config.problems import allowed_keys, config_problems, validation_lines, where
from adcore.config.sections import (
    DataSection,
    ExperimentConfig,
    ModelSection,
    ResolvedConfig,
    weights_fields,
)
from adcore.contracts.records import PluginConfig
from adcore.infra.errors import PluginError
from adcore.infra.suggest import did_you_mean
from adcore.plugins.registry import Component, Registry
from adcore.toolkit.trained import trained_resolution
from adcore.toolkit.weights import RANDOM


def _plugin_settings(
    registry: Registry,
    kind: str,
    name: str,
    values: dict[str, Any],
    section: str,
    shared: type[BaseModel],
    problems: list[str],
    locations: dict[str, str] | None = None,
) -> tuple[Component | None, PluginConfig | None]:
    """The plugin and its own settings; what is wrong goes to ``problems``."""
    try:
        component = registry.resolve(kind, name)
    except PluginError as error:
        key = f"{section}.{'name' if kind == 'method' else 'dataset'}"
        problems.append(f"  - {key}: {error}{where(key, locations)}")
        return None, None
    model = component.spec.config
    try:
        return component, model.model_validate(values)
    except ValidationError as error:
        lines = validation_lines(error, section, locations, model, shared.model_fields)
        if any(item["type"] == "extra_forbidden" for item in error.errors()):
            lines.append(
                f"    allowed keys in {section} for {kind} {component.spec.name!r}: "
                f"{allowed_keys(model, shared)}"
            )
        problems.extend(lines)
        return component, None


def resolve_dataset(
    base: ExperimentConfig, registry: Registry, locations: dict[str, str] | None = None
) -> tuple[Component, PluginConfig]:
    """The data set plugin and its own settings from the ``data`` section."""
    problems: list[str] = []
    dataset, settings = _plugin_settings(
        registry, "dataset", base.data.dataset, dict(base.data.model_extra or {}), "data",
        DataSection, problems, locations,
    )  # fmt: skip
    if problems or dataset is None or settings is None:
        raise config_problems(problems)
    return dataset, settings


def _natural_k_shot(method: Component, problems: list[str]) -> tuple[int | str | None, str]:
    spec = method.spec
    natural = spec.natural_setting
    if natural is None:
        problems.append(
            f"  - data.k_shot: not given, and {spec.name!r} has no natural setting (it is "
            "few-shot only); give --k-shot K or data.k_shot"
        )
        return None, ""
    setting = {0: "zero-shot", "all": "full-shot"}.get(natural, f"{natural}-shot")
    return natural, (
        f"k_shot not given: {spec.name} runs its natural setting, {setting} (k_shot={natural}); "
        "--k-shot chooses another."
    )


def _check_metrics(
    metrics: Any, registry: Registry, problems: list[str], locations: dict[str, str] | None
) -> None:
    names = metrics if isinstance(metrics, list) else [metrics]
    unknown = [str(m) for m in names if str(m).rpartition(":")[2] not in registry.names("metric")]
    if unknown:
        known = registry.names("metric")
        told = [m + did_you_mean(m.rpartition(":")[2], known, " (did you mean") for m in unknown]
        told = [t + ")" if t.endswith("?") else t for t in told]
        problems.append(
            f"  - evaluation.metrics: unknown metric(s) {', '.join(told)}; available: "
            f"{', '.join(known)}{where('evaluation.metrics', locations)}"
        )


def resolution_note(method_config: PluginConfig) -> str:
    """A warning when ``model.checkpoint`` was trained at another ``model.resolution``."""
    checkpoint = getattr(method_config, "checkpoint", None)
    resolution = getattr(method_config, "resolution", None)
    if not checkpoint or not isinstance(resolution, int):
        return ""
    trained = trained_resolution(Path(str(checkpoint)).expanduser())
    if trained is None or trained == resolution:
        return ""
    return (
        f"Warning: model.checkpoint {checkpoint} was trained at model.resolution={trained} "
        f"px, and this run uses {resolution} px: its trained parts meet features of another "
        f"scale, so results may not be what it was trained for. Add --set "
        f"model.resolution={trained} to use it as trained (or train one at {resolution})."
    )


def reporter_problems(names: list[str] | None, registry: Registry) -> list[str]:
    """What is wrong with a list of reporter names: each must be a registered reporter
    (``dist:name`` when two distributions claim it) or ``default``, the default ones."""
    problems = []
    for name in names or []:
        if name == "default":
            continue
        try:
            registry.resolve("reporter", name)
        except PluginError as error:
            defaults = sorted(c.spec.name for c in registry.of_kind("reporter") if c.spec.default)
            problems.append(
                f"{error.problem} `default` stands for the default reporters "
                f"({', '.join(defaults) or 'none'})."
            )
    return problems


def resolve(
    base: ExperimentConfig,
    registry: Registry,
    random_weights: bool = False,
    locations: dict[str, str] | None = None,
) -> ResolvedConfig:
    """Find the plugins and validate their own fields, reporting every problem at once;
    ``random_weights`` sets every weights field of the method to ``none``; a missing
    ``data.k_shot`` becomes the method's natural setting (said in ``notes``)."""
    problems: list[str] = []
    method, method_config = _plugin_settings(
        registry, "method", base.model.name, dict(base.model.model_extra or {}), "model",
        ModelSection, problems, locations,
    )  # fmt: skip
    dataset, dataset_config = _plugin_settings(
        registry, "dataset", base.data.dataset, dict(base.data.model_extra or {}), "data",
        DataSection, problems, locations,
    )  # fmt: skip
    _check_metrics(base.evaluation.metrics, registry, problems, locations)
    problems.extend(
        f"  - evaluation.reporters: {problem}{where('evaluation.reporters', locations)}"
        for problem in reporter_problems(base.evaluation.reporters, registry)
    )
    notes = []
    k_shot = base.data.k_shot
    if k_shot is None and method is not None:
        k_shot, note = _natural_k_shot(method, problems)
        notes.append(note)
    if problems or method is None or dataset is None:
        raise config_problems(problems)
    assert method_config is not None and dataset_config is not None
    if random_weights:
        updates = dict.fromkeys(weights_fields(method_config), RANDOM)
        method_config = method_config.model_copy(update=updates)
    notes.append(resolution_note(method_config))
    if base.data.k_shot is None:
        base = base.model_copy(deep=True)
        base.data.k_shot = k_shot
    return ResolvedConfig(
        base=base,
        method=method,
        dataset=dataset,
        method_config=method_config,
        dataset_config=dataset_config,
        notes=[n for n in notes if n],
    )


def resolve_raw(
    raw: dict[str, Any],
    registry: Registry,
    random_weights: bool = False,
    locations: dict[str, str] | None = None,
) -> ResolvedConfig:
    """:func:`resolve` from merged YAML values: the shared sections and the plugins' own
    settings are checked together, so every problem is reported in one message."""
    try:
        base = ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        problems = validation_lines(error, "", locations)
        for section, shared, kind, key in (
            ("model", ModelSection, "method", "name"),
            ("data", DataSection, "dataset", "dataset"),
        ):
            values = raw.get(section) if isinstance(raw.get(section), dict) else {}
            name = values.get(key, shared.model_fields[key].default)
            own = {k: v for k, v in values.items() if k not in shared.model_fields}
            if isinstance(name, str):
                _plugin_settings(registry, kind, name, own, section, shared, problems, locations)
        evaluation = raw.get("evaluation") if isinstance(raw.get("evaluation"), dict) else {}
        if "metrics" in evaluation:
            _check_metrics(evaluation["metrics"], registry, problems, locations)
        raise config_problems(problems) from None
    return resolve(base, registry, random_weights, locations)

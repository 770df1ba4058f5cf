"""Experiment configs: YAML files with ``extends``, overrides, and per-plugin validation.

Order of precedence, lowest first: built-in defaults, the ``extends`` chain (base first), the
file itself, the CLI's sugar options (``--method``, ``--dataset``, ...), then ``--set a.b=v``.
The ``model`` and ``data`` sections carry the chosen plugin's own fields, validated by that
plugin's config model once the plugin is known.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from adcore.errors import ConfigError
from adcore.method import Precision
from adcore.plugins import Component, Registry
from adcore.records import PluginConfig
from adcore.weights import RANDOM

DEFAULT_METRICS = ["image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"]
SECTIONS = ("experiment", "data", "model", "evaluation", "visualization")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ExperimentSection(Section):
    name: str = Field("default", description="Folder name of this experiment's results.")
    seed: int = Field(0, description="Seed of the support set and of any randomness.")
    output_root: Path = Field(Path("results"), description="Root of the results layout.")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, value: str) -> str:
        if not value or "/" in value or value.startswith("."):
            raise ValueError("must be a plain folder name (no '/', not starting with '.')")
        return value


class DataSection(Section):
    """Shared data keys; any other key belongs to the data set plugin's config."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    dataset: str = Field("synthetic", description="Data set plugin name (or dist:name).")
    root: Path | None = Field(None, description="Data set root folder.")
    categories: list[str] | None = Field(None, description="Categories to run; all if unset.")
    batch_size: int = Field(8, ge=1, description="Test images per predict batch.")
    k_shot: int | Literal["all"] = Field(
        0, description="Normal training images given to fit: 0 zero-shot, k few-shot, all."
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    skip_bad_samples: bool = Field(False, description="Leave out unreadable or bad samples.")

    @field_validator("k_shot")
    @classmethod
    def _non_negative(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 0:
            raise ValueError("must be 0 (zero-shot), a positive count, or 'all' (full-shot)")
        return value


class ModelSection(Section):
    """Shared model keys; any other key belongs to the method plugin's config."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = Field("patchcore", description="Method plugin name (or dist:name).")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N.")
    precision: Precision = Field(
        "fp32", description="fp32, or bf16 (CUDA; AMX/AVX512-BF16 CPUs) / fp16 (CUDA) backbones."
    )

    @field_validator("device")
    @classmethod
    def _known_device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in {"auto", "cpu", "cuda"} or (index and not index.isdigit()):
            raise ValueError("must be auto, cpu, cuda or cuda:N")
        return value


class LatencySettings(Section):
    enabled: bool = Field(True, description="Run the efficiency probe after each category.")
    warmup_iters: int | None = Field(None, ge=0, description="Untimed iterations first.")
    measure_iters: int | None = Field(None, ge=1, description="Timed iterations.")
    throughput_batch: int = Field(16, ge=1, description="Batch size of the throughput run.")


class EvaluationSection(Section):
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    resolution: Literal["input", "original"] = Field(
        "input", description="Compare at the method's map size, or each mask's own size."
    )
    latency: LatencySettings = Field(default_factory=LatencySettings)


class VisualizationSection(Section):
    num_examples: int = Field(8, ge=0, description="Overlays per category.")
    save_overlay: bool = Field(False, description="Write heatmap overlays per category.")


class ExperimentConfig(Section):
    """The whole config before the plugins' own fields are checked."""

    experiment: ExperimentSection = Field(default_factory=ExperimentSection)
    data: DataSection = Field(default_factory=DataSection)
    model: ModelSection = Field(default_factory=ModelSection)
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection)
    visualization: VisualizationSection = Field(default_factory=VisualizationSection)


class ResolvedConfig(BaseModel):
    """A config whose plugins are found and whose plugin fields are validated."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    base: ExperimentConfig
    method: Component
    dataset: Component
    method_config: PluginConfig
    dataset_config: PluginConfig

    def to_dict(self) -> dict[str, Any]:
        """Plain, complete values, as written to ``config.yaml``."""
        data = self.base.model_dump(mode="json")
        data["model"] = {
            **{k: data["model"][k] for k in ("name", "device", "precision")},
            **self.method_config.model_dump(mode="json"),
        }
        shared = {k: v for k, v in data["data"].items() if k in DataSection.model_fields}
        data["data"] = {**shared, **self.dataset_config.model_dump(mode="json")}
        return data

    def fingerprint(self) -> str:
        """Identity of the computation; runtime-only keys do not change results' meaning."""
        data = self.to_dict()
        for key in ("num_workers",):
            data["data"].pop(key, None)
        data["experiment"].pop("output_root", None)
        text = json.dumps(data, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def metric_names(self) -> list[str]:
        """Result column of each metric: its name without a ``distribution:`` prefix."""
        return [m.rpartition(":")[2] for m in self.base.evaluation.metrics]

    @property
    def random_weights(self) -> bool:
        values = weights_fields(self.method_config).values()
        return any(isinstance(v, str) and v.strip().lower() == RANDOM for v in values)


# --- reading and merging -------------------------------------------------------------------


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Dicts merge key by key; anything else in ``override`` replaces."""
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml_mapping(path: Path, what: str, where: str) -> dict[str, Any]:
    """A YAML file that must exist and hold a mapping; errors name the file and the fix."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist.", f"Check {where}.")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{what} {path} is not valid YAML: {error}", "Fix the syntax.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of keys.", f"See {where}.")
    return data


def load_yaml_file(path: Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a config file and the files it extends (relative to it), base first."""
    path = path.expanduser().resolve()
    if path in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain, path))
        raise ConfigError(f"Config files extend each other in a cycle: {cycle}.", "Break it.")
    data = read_yaml_mapping(path, "Config file", "the path given to --config or extends")
    parent = data.pop("extends", None)
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(
            f"Unknown section(s) {', '.join(unknown)} in {path}.",
            f"Allowed sections: extends, {', '.join(SECTIONS)}.",
        )
    if parent is None:
        return data
    base = load_yaml_file(path.parent / str(parent), (*_chain, path))
    return deep_merge(base, data)


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """``("a.b", v)`` -> {"a": {"b": v}}, checking the section name."""
    parts = dotted.strip().split(".")
    if parts[0] not in SECTIONS:
        raise ConfigError(
            f"{dotted!r} names an unknown section {parts[0]!r}.",
            f"Allowed sections: {', '.join(SECTIONS)}.",
        )
    tree: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        tree = {part: tree}
    return tree


def parse_assignment(text: str) -> dict[str, Any]:
    """``a.b=value`` -> {"a": {"b": value}}; the value is read as YAML (numbers, lists...)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip() or any(not part for part in key.strip().split(".")):
        raise ConfigError(
            f"--set {text!r} is not of the form section.key=value.",
            "For example --set data.batch_size=16 or --set model.layers=[layer2,layer3].",
        )
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return nested(key, value)


def build_raw_config(
    config_file: Path | None = None,
    sugar: dict[str, Any] | None = None,
    assignments: list[str] | None = None,
) -> dict[str, Any]:
    """Merge file, sugar options (dotted keys) and ``--set`` assignments, in that order."""
    raw = load_yaml_file(config_file) if config_file else {}
    for dotted, value in (sugar or {}).items():
        if value is not None:
            raw = deep_merge(raw, nested(dotted, value))
    for assignment in assignments or []:
        raw = deep_merge(raw, parse_assignment(assignment))
    return raw


# --- validation ------------------------------------------------------------------------------


def format_validation(error: ValidationError, prefix: str = "") -> str:
    """One bullet per problem: the field, the value given, and what is allowed."""
    lines = []
    for item in error.errors():
        location = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        unknown = item["type"] == "extra_forbidden"
        message = "unknown key" if unknown else item["msg"]
        shown = "" if unknown or item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  - {location}: {message}{shown}")
    return "\n".join(lines)


def _allowed_keys(model: type[BaseModel], shared: type[BaseModel]) -> str:
    return ", ".join(sorted({*model.model_fields, *shared.model_fields}))


def validate_base(raw: dict[str, Any]) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(
            "The config is invalid:\n" + format_validation(error),
            "Fix the listed keys in the config file or the --set options.",
        ) from None


def weights_fields(config: BaseModel) -> dict[str, Any]:
    """Fields that name weights: ``pretrained`` and those marked ``{"weights": True}``."""
    found = {}
    for name, info in type(config).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name == "pretrained" or extra.get("weights"):
            found[name] = getattr(config, name)
    return found


def _plugin_config(
    component: Component, values: dict[str, Any], section: str, shared: type[BaseModel]
) -> PluginConfig:
    model = component.spec.config
    try:
        return model.model_validate(values)
    except ValidationError as error:
        raise ConfigError(
            f"The {section} section is invalid for {component.spec.kind} "
            f"{component.spec.name!r}:\n" + format_validation(error, section),
            f"Allowed keys in {section}: {_allowed_keys(model, shared)}.",
        ) from None


def resolve_dataset(base: ExperimentConfig, registry: Registry) -> tuple[Component, PluginConfig]:
    """The data set plugin and its own settings from the ``data`` section."""
    dataset = registry.resolve("dataset", base.data.dataset)
    values = dict(base.data.model_extra or {})
    return dataset, _plugin_config(dataset, values, "data", DataSection)


def resolve(
    base: ExperimentConfig, registry: Registry, random_weights: bool = False
) -> ResolvedConfig:
    """Find the plugins and validate their own fields; ``random_weights`` sets every
    weights field of the method to ``none``."""
    method = registry.resolve("method", base.model.name)
    dataset, dataset_config = resolve_dataset(base, registry)
    method_values = dict(base.model.model_extra or {})
    method_config = _plugin_config(method, method_values, "model", ModelSection)
    if random_weights:
        updates = dict.fromkeys(weights_fields(method_config), RANDOM)
        method_config = method_config.model_copy(update=updates)
    dataset_config = _plugin_config(dataset, dict(base.data.model_extra or {}), "data", DataSection)
    unknown_metrics = [
        m for m in base.evaluation.metrics if m.rpartition(":")[2] not in registry.names("metric")
    ]
    if unknown_metrics:
        raise ConfigError(
            f"Unknown metric(s) {', '.join(unknown_metrics)} in evaluation.metrics.",
            f"Available metrics: {', '.join(registry.names('metric'))}.",
        )
    return ResolvedConfig(
        base=base,
        method=method,
        dataset=dataset,
        method_config=method_config,
        dataset_config=dataset_config,
    )


def config_schema(registry: Registry) -> dict[str, Any]:
    """JSON schema of the config, with each plugin's own settings under ``$defs``."""
    schema = ExperimentConfig.model_json_schema()
    plugins: dict[str, Any] = {}
    for kind in ("method", "dataset"):
        for component in registry.of_kind(kind):
            key = f"{kind}:{component.qualified_name}"
            plugins[key] = component.spec.config.model_json_schema()
    schema["x-plugin-configs"] = plugins
    return schema

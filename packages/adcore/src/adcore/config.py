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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adcore.errors import ConfigError, PluginError, UsageError
from adcore.method import Precision
from adcore.plugins import Component, Registry
from adcore.records import PluginConfig, listify_scalars
from adcore.weights import RANDOM

DEFAULT_METRICS = ["image_auroc", "image_f1_max", "pixel_auroc", "pixel_f1_max", "pro"]
SECTIONS = ("experiment", "data", "model", "evaluation", "visualization")


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, data: Any) -> Any:
        return listify_scalars(cls, data)


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
    k_shot: int | Literal["all"] | None = Field(
        None,
        description="Normal training images given to fit: 0 zero-shot, k few-shot, all; "
        "null: the method's natural setting.",
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    skip_bad_samples: bool = Field(False, description="Leave out unreadable or bad samples.")
    max_image_pixels: int | None = Field(
        89_478_485,  # PIL's Image.MAX_IMAGE_PIXELS
        ge=1,
        description="Largest image decoded (width x height); larger ones are bad samples. "
        "null: no limit.",
    )
    intensity_range: Literal["category", "type"] | tuple[float, float] = Field(
        "category",
        description="How images of more than 8 bits become 0..255: 'category' (one range per "
        "category: the full scale of the smallest bit depth holding its largest value; floats "
        "0..1 or their min..max), 'type' (the container's full scale), or [low, high].",
    )

    @field_validator("k_shot", mode="before")
    @classmethod
    def _setting(cls, value: Any) -> Any:
        """One message for every wrong value (not one per member of the union)."""
        if value is None or value == "all":
            return value
        text = str(value).strip()
        if isinstance(value, bool) or not text.isdigit():
            raise ValueError("must be 0 (zero-shot), a positive count, or 'all' (full-shot)")
        return int(text)


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
    """Efficiency figures of ``ad eval``: from the prediction pass plus a budgeted probe."""

    enabled: bool = Field(True, description="Record efficiency figures for each category.")
    warmup_iters: int | None = Field(
        None, ge=0, description="Untimed batch-1 calls first (default: 0 on CPU, 10 on CUDA)."
    )
    measure_iters: int | None = Field(
        None, ge=1, description="Timed batch-1 calls; unset: as many as the budget allows."
    )
    budget_fraction: float = Field(
        0.05, gt=0, le=1, description="Batch-1 probe budget, a fraction of the predict time."
    )
    min_iters: int = Field(
        3, ge=1, description="Timed batch-1 calls at least, whatever the budget."
    )
    throughput_batch: int = Field(16, ge=1, description="Batch size of ad bench's throughput run.")


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
    notes: list[str] = []  # choices made for the user, e.g. the natural k_shot

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


def yaml_locations(path: Path) -> dict[str, str]:
    """Dotted key -> ``file:line`` of every key in a YAML file, for error messages."""
    try:
        root = yaml.compose(path.read_text())
    except yaml.YAMLError:
        return {}
    found: dict[str, str] = {}

    def walk(node: yaml.Node, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                dotted = f"{prefix}.{key.value}" if prefix else str(key.value)
                found[dotted] = f"{path}:{key.start_mark.line + 1}"
                walk(value, dotted)

    if root is not None:
        walk(root, "")
    return found


def load_yaml_file(
    path: Path, _chain: tuple[Path, ...] = (), locations: dict[str, str] | None = None
) -> dict[str, Any]:
    """Read a config file and the files it extends (relative to it), base first;
    ``locations`` receives each key's ``file:line`` (the last file that sets it wins)."""
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
        merged = data
    else:
        merged = deep_merge(
            load_yaml_file(path.parent / str(parent), (*_chain, path), locations), data
        )
    if locations is not None:
        locations.update({k: v for k, v in yaml_locations(path).items() if k != "extends"})
    return merged


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
        raise UsageError(
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
    locations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Merge file, sugar options (dotted keys) and ``--set`` assignments, in that order;
    ``locations`` receives where each key was given (``file:line``, ``--set ...``)."""
    raw = load_yaml_file(config_file, locations=locations) if config_file else {}
    for dotted, value in (sugar or {}).items():
        if value is not None:
            raw = deep_merge(raw, nested(dotted, value))
            if locations is not None:
                locations[dotted] = "command-line option"
    for assignment in assignments or []:
        raw = deep_merge(raw, parse_assignment(assignment))
        if locations is not None:
            locations[assignment.partition("=")[0].strip()] = f"--set {assignment}"
    return raw


# --- validation ------------------------------------------------------------------------------


def _where(dotted: str, locations: dict[str, str] | None) -> str:
    """`` (file:line)`` of the longest prefix of ``dotted`` that was given somewhere."""
    key = dotted
    while key and locations:
        if key in locations:
            return f" ({locations[key]})"
        key = key.rpartition(".")[0]
    return ""


def validation_lines(
    error: ValidationError, prefix: str = "", locations: dict[str, str] | None = None
) -> list[str]:
    """One bullet per problem: the field, the value given, what is allowed, and where."""
    lines = []
    for item in error.errors():
        location = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        unknown = item["type"] == "extra_forbidden"
        message = "unknown key" if unknown else item["msg"]
        shown = "" if unknown or item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  - {location}: {message}{shown}{_where(location, locations)}")
    return lines


def format_validation(error: ValidationError, prefix: str = "") -> str:
    return "\n".join(validation_lines(error, prefix))


def _allowed_keys(model: type[BaseModel], shared: type[BaseModel]) -> str:
    return ", ".join(sorted({*model.model_fields, *shared.model_fields}))


FIX_HINT = "Fix the listed keys in the config file or the --set options."


def config_problems(lines: list[str]) -> ConfigError:
    found = sum(line.startswith("  - ") for line in lines)
    count = f"{found} problems" if found > 1 else "a problem"
    return ConfigError(f"The config has {count}:\n" + "\n".join(lines), FIX_HINT)


def validate_base(raw: dict[str, Any], locations: dict[str, str] | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise config_problems(validation_lines(error, "", locations)) from None


def weights_fields(config: BaseModel) -> dict[str, Any]:
    """Fields that name weights: ``pretrained`` and those marked ``{"weights": True}``."""
    found = {}
    for name, info in type(config).model_fields.items():
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if name == "pretrained" or extra.get("weights"):
            found[name] = getattr(config, name)
    return found


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
        problems.append(f"  - {key}: {error}{_where(key, locations)}")
        return None, None
    model = component.spec.config
    try:
        return component, model.model_validate(values)
    except ValidationError as error:
        lines = validation_lines(error, section, locations)
        if any(item["type"] == "extra_forbidden" for item in error.errors()):
            lines.append(
                f"    allowed keys in {section} for {kind} {component.spec.name!r}: "
                f"{_allowed_keys(model, shared)}"
            )
        problems.extend(lines)
        return component, None


def resolve_dataset(base: ExperimentConfig, registry: Registry) -> tuple[Component, PluginConfig]:
    """The data set plugin and its own settings from the ``data`` section."""
    problems: list[str] = []
    dataset, settings = _plugin_settings(
        registry, "dataset", base.data.dataset, dict(base.data.model_extra or {}), "data",
        DataSection, problems,
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
        problems.append(
            f"  - evaluation.metrics: unknown metric(s) {', '.join(unknown)}; available: "
            f"{', '.join(registry.names('metric'))}{_where('evaluation.metrics', locations)}"
        )


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


def _section_schema(
    component: Component, shared: type[BaseModel], defs: dict[str, Any]
) -> dict[str, Any]:
    """The shared keys plus the plugin's own, nothing else (its nested models into ``defs``)."""
    own = component.spec.config.model_json_schema()
    defs.update(own.pop("$defs", {}))
    base = shared.model_json_schema()
    defs.update(base.pop("$defs", {}))
    return {
        "title": f"{shared.__name__} for {component.spec.kind} {component.qualified_name}",
        "type": "object",
        "properties": {**base.get("properties", {}), **own.get("properties", {})},
        "additionalProperties": False,
    }


def config_schema(registry: Registry) -> dict[str, Any]:
    """JSON schema of the config. ``model`` and ``data`` are checked against the chosen
    plugin's own settings (``if``/``then`` on ``model.name`` and ``data.dataset``, either
    spelling, ``name`` or ``distribution:name``), so editors flag unknown keys; each plugin's
    settings also sit under ``x-plugin-configs``."""
    schema = ExperimentConfig.model_json_schema()
    defs = schema.setdefault("$defs", {})
    plugins: dict[str, Any] = {}
    for kind, section, key, shared in (
        ("method", "model", "name", ModelSection),
        ("dataset", "data", "dataset", DataSection),
    ):
        rules = []
        default = shared.model_fields[key].default
        for component in registry.of_kind(kind):
            ref = f"{section}:{component.qualified_name}"
            defs[ref] = _section_schema(component, shared, defs)
            plugins[f"{kind}:{component.qualified_name}"] = (
                component.spec.config.model_json_schema()
            )
            names = [component.spec.name, component.qualified_name]
            rules.append(
                {
                    "if": {"required": [key], "properties": {key: {"enum": names}}},
                    "then": {"$ref": f"#/$defs/{ref}"},
                }
            )
            if component.spec.name == default:
                rules.append(
                    {"if": {"not": {"required": [key]}}, "then": {"$ref": f"#/$defs/{ref}"}}
                )
        section_ref = schema["properties"][section].pop("$ref", None)
        schema["properties"][section] = {
            "allOf": [*([{"$ref": section_ref}] if section_ref else []), *rules],
            **schema["properties"][section],
        }
    schema["x-plugin-configs"] = plugins
    _accept_scalars(schema)
    return schema


def _accept_scalars(node: Any) -> None:
    """Where a list is expected, a single item is allowed too, as the loader reads it."""
    if isinstance(node, list):
        for item in node:
            _accept_scalars(item)
        return
    if not isinstance(node, dict):
        return
    for value in node.values():
        _accept_scalars(value)
    for prop in (node.get("properties") or {}).values():
        options = prop.get("anyOf", [prop] if prop.get("type") == "array" else [])
        arrays = [o for o in options if o.get("type") == "array" and "items" in o]
        if not arrays or any(o.get("type") == "string" for o in options):
            continue
        if "anyOf" in prop:
            prop["anyOf"] = [*options, arrays[0]["items"]]
        else:
            items = prop.pop("items")
            prop.pop("type")
            prop["anyOf"] = [{"type": "array", "items": items}, items]

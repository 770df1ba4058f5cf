"""Reading configs: YAML files with ``extends``, deep merging, ``--set a.b=value`` assignments.

Order of precedence, lowest first: built-in defaults, the ``extends`` chain (base first), the
file itself, the CLI's sugar options (``--method``, ``--dataset``, ...), then ``--set a.b=v``."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from adcore.config.sections import SECTIONS
from adcore.infra.errors import ConfigError, UsageError
from adcore.infra.suggest import did_you_mean


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
        hints = "".join(did_you_mean(u, SECTIONS, lead=f" {u}: did you mean") for u in unknown)
        raise ConfigError(
            f"Unknown section(s) {', '.join(unknown)} in {path}.{hints}",
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
            f"{dotted!r} names an unknown section {parts[0]!r}.{did_you_mean(parts[0], SECTIONS)}",
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

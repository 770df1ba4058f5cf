"""``ad config schema``: a JSON schema in which ``model`` and ``data`` follow the chosen plugin."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from adcore.config.sections import DataSection, ExperimentConfig, ModelSection
from adcore.plugins.registry import Component, Registry


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

"""A config's problems told at once: one line per field, with the file and line (or ``--set``)
it came from, the value, and what is allowed."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ValidationError

from adcore.config.sections import ExperimentConfig
from adcore.infra.errors import ConfigError


def where(dotted: str, locations: dict[str, str] | None) -> str:
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
        lines.append(f"  - {location}: {message}{shown}{where(location, locations)}")
    return lines


def format_validation(error: ValidationError, prefix: str = "") -> str:
    return "\n".join(validation_lines(error, prefix))


def allowed_keys(model: type[BaseModel], shared: type[BaseModel]) -> str:
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

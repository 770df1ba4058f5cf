"""A config's problems told at once: one line per field, with the file and line (or ``--set``)
it came from, the value, and what is allowed."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from adcore.config.sections import ExperimentConfig
from adcore.infra.errors import ConfigError, UsageError
from adcore.infra.suggest import did_you_mean


def where(dotted: str, locations: dict[str, str] | None) -> str:
    """`` (file:line)`` of the longest prefix of ``dotted`` that was given somewhere."""
    key = dotted
    while key and locations:
        if key in locations:
            return f" ({locations[key]})"
        key = key.rpartition(".")[0]
    return ""


def validation_lines(
    error: ValidationError,
    prefix: str = "",
    locations: dict[str, str] | None = None,
    model: type[BaseModel] | None = ExperimentConfig,
    also_known: Iterable[str] = (),
) -> list[str]:
    """One bullet per problem: the field, the value given, what is allowed, and where.

    An unknown key of ``model`` (the model ``error`` came from) gets the close match among
    the keys its section has (``also_known`` too, at the top: a section's shared fields)."""
    lines = []
    for item in error.errors():
        location = ".".join(str(p) for p in (prefix, *item["loc"]) if p != "")
        unknown = item["type"] == "extra_forbidden"
        message = "unknown key" if unknown else item["msg"]
        if unknown:
            known = keys_at(model, item["loc"][:-1])
            known += list(also_known) if len(item["loc"]) == 1 else []
            message += did_you_mean(str(item["loc"][-1]), known, lead="; did you mean")
        shown = "" if unknown or item["type"] == "missing" else f" (got {item.get('input')!r})"
        lines.append(f"  - {location}: {message}{shown}{where(location, locations)}")
    return lines


def keys_at(model: type[BaseModel] | None, path: tuple[Any, ...]) -> list[str]:
    """The field names of the section of ``model`` at ``path`` (empty where not a model)."""
    for part in path:
        field = model.model_fields.get(str(part)) if model is not None else None
        annotation = field.annotation if field is not None else None
        is_model = isinstance(annotation, type) and issubclass(annotation, BaseModel)
        model = annotation if is_model else None
    return list(model.model_fields) if model is not None else []


def format_validation(error: ValidationError, prefix: str = "") -> str:
    return "\n".join(validation_lines(error, prefix))


def allowed_keys(model: type[BaseModel], shared: type[BaseModel]) -> str:
    return ", ".join(sorted({*model.model_fields, *shared.model_fields}))


FIX_HINT = "Fix the listed keys in the config file or the --set options."


UNKNOWN_OPTION_NAMES = ("  - model.name: Unknown method", "  - data.dataset: Unknown dataset")


def config_problems(lines: list[str]) -> ConfigError | UsageError:
    """The problems as one error: a usage error (exit 2) when a name given to ``--method``
    or ``--dataset`` is unknown, else a config error (exit 1)."""
    found = sum(line.startswith("  - ") for line in lines)
    count = f"{found} problems" if found > 1 else "a problem"
    usage = any(
        line.startswith(UNKNOWN_OPTION_NAMES) and line.endswith("(command-line option)")
        for line in lines
    )
    kind = UsageError if usage else ConfigError
    return kind(f"The config has {count}:\n" + "\n".join(lines), FIX_HINT)


def validate_base(raw: dict[str, Any], locations: dict[str, str] | None = None) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise config_problems(validation_lines(error, "", locations)) from None

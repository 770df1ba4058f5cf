"""Typed records that plugins yield from their hooks.

A record describes a component without building it: ``factory`` does the heavy imports
(torch models, faiss) only when the component is used, so listing plugins stays fast.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

SLUG = re.compile(r"^[a-z][a-z0-9_-]*$")


def _takes_list(annotation: Any) -> bool:
    """A list type, or a union with a list but no string (``list[str] | None``)."""
    if typing.get_origin(annotation) is list:
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        return any(_takes_list(m) for m in members) and str not in members
    return False


def listify_scalars(model: type[BaseModel], data: Any) -> Any:
    """A single value given for a list field is a one-item list (``categories: fabric``)."""
    if not isinstance(data, dict):
        return data
    fixed = dict(data)
    for name, info in model.model_fields.items():
        value = fixed.get(name)
        scalar = isinstance(value, (str, int, float)) and not isinstance(value, bool)
        if scalar and _takes_list(info.annotation):
            fixed[name] = [value]
    return fixed


class PluginConfig(BaseModel):
    """Base for a component's own settings: unknown keys are errors, not silently ignored;
    a single value for a list field is read as a one-item list."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _listify(cls, data: Any) -> Any:
        return listify_scalars(cls, data)


class EmptyConfig(PluginConfig):
    """For components that take no settings."""


class Capability(str, enum.Enum):
    """What a method can do; the runner refuses settings a method does not declare."""

    ZERO_SHOT = "zero-shot"
    FEW_SHOT = "few-shot"
    FULL_SHOT = "full-shot"
    TRAINABLE = "trainable"
    TRANSDUCTIVE = "transductive"  # scores the test set jointly (a TransductiveMethod)
    EXPORTABLE = "exportable"  # its fitted prediction is one torch module (an ExportableMethod)


class ComponentSpec(BaseModel):
    """Common shape of every record: a slug name, a one-line summary, settings, a factory."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    kind: Literal["method", "dataset", "metric", "reporter"]
    name: str
    summary: str
    config: type[PluginConfig] = EmptyConfig
    factory: Callable[..., Any]

    @field_validator("name")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(
                f"name {value!r} must be a lowercase slug (letters, digits, '-' or '_', "
                "starting with a letter)"
            )
        return value

    @field_validator("config")
    @classmethod
    def _forbids_extra(cls, value: type[PluginConfig]) -> type[PluginConfig]:
        if not (isinstance(value, type) and issubclass(value, BaseModel)):
            raise ValueError("config must be a pydantic model class")
        if value.model_config.get("extra") != "forbid":
            raise ValueError(f"config model {value.__name__} must set extra='forbid'")
        return value


class MethodSpec(ComponentSpec):
    """``factory(config, runtime) -> adcore.contracts.method.Method``.

    ``smoke_config`` overrides the defaults for a seconds-long check on the CPU (a tiny
    backbone, random weights); ``adcore.testing.check_method`` builds the method with it.
    ``natural_k_shot`` is the setting used when no ``data.k_shot`` is given (see
    :attr:`natural_setting` for the default). ``not_exportable``: why a method without the
    ``exportable`` capability cannot be exported (shown by ``ad list-plugins`` and
    ``ad export``); empty for an exportable one.
    """

    kind: Literal["method"] = "method"
    capabilities: frozenset[Capability]
    smoke_config: dict[str, Any] = {}
    natural_k_shot: int | Literal["all"] | None = None
    not_exportable: str = ""

    @property
    def natural_setting(self) -> int | Literal["all"] | None:
        """``data.k_shot`` when none is given: ``natural_k_shot``, else zero-shot when
        supported, else full-shot (``"all"``); None for a few-shot-only method."""
        if self.natural_k_shot is not None:
            return self.natural_k_shot
        if Capability.ZERO_SHOT in self.capabilities:
            return 0
        return "all" if Capability.FULL_SHOT in self.capabilities else None

    @field_validator("capabilities")
    @classmethod
    def _some_setting(cls, value: frozenset[Capability]) -> frozenset[Capability]:
        shots = {Capability.ZERO_SHOT, Capability.FEW_SHOT, Capability.FULL_SHOT}
        if not value & shots:
            raise ValueError("a method must support at least one of zero-, few- or full-shot")
        return value

    @model_validator(mode="after")
    def _export_reason_only_when_not_exportable(self) -> MethodSpec:
        if self.not_exportable and Capability.EXPORTABLE in self.capabilities:
            raise ValueError("an exportable method gives no not_exportable reason")
        return self


class DatasetSpec(ComponentSpec):
    """``factory(config, root) -> adcore.contracts.dataset.Dataset``; ``root`` may be None.

    ``download(root, progress)``, where given, fetches and unpacks the data set into
    ``root``; ``download_help`` tells users how to obtain it when it cannot be fetched.
    """

    kind: Literal["dataset"] = "dataset"
    needs_root: bool = True
    download: Callable[..., Any] | None = None
    download_help: str = ""


class MetricSpec(ComponentSpec):
    """``factory(config) -> Callable[[EvalData], float]``."""

    kind: Literal["metric"] = "metric"
    level: Literal["image", "pixel"]
    higher_is_better: bool = True


class ReporterSpec(ComponentSpec):
    """``factory(config) -> adcore.api.Reporter`` (defined in ``adcore.outputs.reporting``).

    ``default``: the reporter runs in every evaluation that does not choose its reporters
    (``evaluation.reporters`` unset; the name ``default`` in that list stands for all of
    these). A reporter with ``default=False`` runs only when named there or by
    ``ad eval --reporter NAME``.
    """

    kind: Literal["reporter"] = "reporter"
    default: bool = False

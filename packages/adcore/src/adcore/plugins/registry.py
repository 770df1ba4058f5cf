"""Discovering plugins: every distribution with an ``adcore`` entry point.

Each entry point loads on its own, so one broken plugin is listed with its error and never
takes the CLI down. ``AD_PLUGINS=a,b`` loads only those distributions (``AD_PLUGINS=`` none),
``AD_DISABLE_PLUGINS=a`` skips one before it is imported. The host's own built-in metrics
and reporters come through the same entry-point group and are always loaded.
"""

from __future__ import annotations

import difflib
import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy
from pydantic import BaseModel, ValidationError

from adcore.contracts import hookspecs
from adcore.contracts.records import (
    ComponentSpec,
    DatasetSpec,
    MethodSpec,
    MetricSpec,
    ReporterSpec,
)
from adcore.infra.errors import PluginError
from adcore.infra.suggest import did_you_mean

HOST_DISTRIBUTION = "adcore"
HOOKS: dict[str, tuple[str, type[ComponentSpec]]] = {
    "method": ("adcore_methods", MethodSpec),
    "dataset": ("adcore_datasets", DatasetSpec),
    "metric": ("adcore_metrics", MetricSpec),
    "reporter": ("adcore_reporters", ReporterSpec),
}


@dataclass
class PluginInfo:
    """One entry point: where it came from and whether it loaded."""

    name: str
    distribution: str
    version: str
    status: str = "ok"  # ok | error
    error: str | None = None
    module: str = ""  # the entry point's module, e.g. ``ad_patchcore.plugin``


@dataclass(frozen=True)
class Component:
    """A record together with the plugin that registered it."""

    spec: ComponentSpec
    plugin: PluginInfo

    @property
    def qualified_name(self) -> str:
        return f"{self.plugin.distribution}:{self.spec.name}"


@dataclass
class Registry:
    """Everything that loaded, by kind, plus every plugin's status."""

    plugins: list[PluginInfo] = field(default_factory=list)
    components: list[Component] = field(default_factory=list)
    used: list[Component] = field(default_factory=list)  # resolved in this process

    def of_kind(self, kind: str) -> list[Component]:
        return [c for c in self.components if c.spec.kind == kind]

    def names(self, kind: str) -> list[str]:
        return sorted({c.spec.name for c in self.of_kind(kind)})

    def resolve(self, kind: str, name: str) -> Component:
        """``name`` or ``distribution:name``; unknown or ambiguous names are errors."""
        distribution, _, short = name.rpartition(":")
        matches = [
            c
            for c in self.of_kind(kind)
            if c.spec.name == short and (not distribution or c.plugin.distribution == distribution)
        ]
        if len(matches) == 1:
            if matches[0] not in self.used:
                self.used.append(matches[0])
            return matches[0]
        if not matches:
            available = ", ".join(self.names(kind)) or "none"
            broken = [p for p in self.plugins if p.status == "error"]
            note = (
                " Some plugins failed to load (see `ad list-plugins`): "
                + ", ".join(p.distribution for p in broken)
                + "."
                if broken
                else ""
            )
            raise PluginError(
                f"Unknown {kind} {name!r}.{did_you_mean(short, self.names(kind))} "
                f"Available: {available}.{note}",
                f"Pick one of those, or install the distribution that provides {short!r}.",
            )
        owners = " and ".join(c.plugin.distribution for c in matches)
        choices = ", ".join(c.qualified_name for c in matches)
        raise PluginError(
            f"The {kind} name {short!r} is registered by two distributions: {owners}.",
            f"Select one explicitly as {choices}, or uninstall one of them.",
        )


def _split_env(name: str) -> set[str] | None:
    value = os.environ.get(name)
    if value is None:
        return None
    return {part.strip() for part in value.split(",") if part.strip()}


def _wanted(distribution: str) -> bool:
    if distribution == HOST_DISTRIBUTION:
        return True
    only = _split_env("AD_PLUGINS")
    disabled = _split_env("AD_DISABLE_PLUGINS") or set()
    if distribution in disabled:
        return False
    return only is None or distribution in only


def _describe(error: BaseException) -> str:
    if isinstance(error, PluginError):
        return str(error)
    if isinstance(error, ValidationError):
        parts = [
            f"{'.'.join(str(p) for p in e['loc']) or 'record'}: {e['msg']}" for e in error.errors()
        ]
        return f"invalid record: {'; '.join(parts)}"
    return f"{type(error).__name__}: {error}"


def unmatched_hooks(manager: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hook implementations of ``plugin`` that match no spec, each with the name it should have.

    pluggy's ``check_pending()`` for one plugin: a misspelt ``adcore_method`` would otherwise
    load as "ok" with no components. A function named like a hook but lacking ``@hookimpl`` is
    never called either, so it is reported too.
    """
    specs = sorted(hook for hook, _ in HOOKS.values())
    callers = manager.get_hookcallers(plugin) or []
    problems = []
    for caller in callers:
        if caller.has_spec():
            continue
        close = difflib.get_close_matches(caller.name, specs, n=1, cutoff=0.5)
        should = f"did you mean {close[0]!r}?" if close else f"the hooks are {', '.join(specs)}."
        problems.append(f"hook {caller.name!r} matches no hook of adcore; {should}")
    marked = {impl.function for c in callers for impl in c.get_hookimpls() if impl.plugin is plugin}
    for name in specs:
        function = getattr(plugin, name, None)
        if callable(function) and function not in marked:
            problems.append(f"{name}() is not marked with @hookimpl, so it is never called.")
    return problems


def _check_collection(produced: Any, hook_name: str, record_type: type) -> None:
    """A hook returns a list of records (or yields them): a dict, a string or one record
    would be iterated into its keys, characters or fields, so it is told as what it is."""
    if produced is None:
        return
    if isinstance(produced, (dict, str, bytes, BaseModel)) or not isinstance(produced, Iterable):
        name = record_type.__name__
        raise TypeError(
            f"{hook_name}() returned a {type(produced).__name__}, expected a list of {name} "
            f"records: return [{name}(...), ...] or yield each {name}"
        )


def _records_of(manager: pluggy.PluginManager, plugin_name: str, others: list[str]) -> list[Any]:
    """Call each hook through pluggy for this plugin alone; every item must be the hook's
    record type. Hooks called with no arguments: implementations may take fewer than a spec."""
    records: list[ComponentSpec] = []
    others_objects = [manager.get_plugin(name) for name in others]
    for kind, (hook_name, record_type) in HOOKS.items():
        caller = manager.subset_hook_caller(hook_name, remove_plugins=others_objects)
        for produced in caller():
            _check_collection(produced, hook_name, record_type)
            for record in produced or ():
                if not isinstance(record, record_type):
                    raise TypeError(
                        f"{hook_name}() yielded {type(record).__name__}, expected "
                        f"{record_type.__name__} (a {kind} record)"
                    )
                records.append(record)
    return records


def load_registry(entry_points: Iterable[metadata.EntryPoint] | None = None) -> Registry:
    """Load every wanted entry point of group ``adcore``, each inside its own try/except."""
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    registry = Registry()
    if entry_points is None:
        entry_points = metadata.entry_points(group=hookspecs.ENTRY_POINT_GROUP)
    loaded: list[str] = []
    for entry_point in sorted(
        entry_points, key=lambda ep: (ep.dist.name if ep.dist else "", ep.name)
    ):
        distribution = entry_point.dist.name if entry_point.dist else entry_point.name
        version = entry_point.dist.version if entry_point.dist else "?"
        if not _wanted(distribution):
            continue
        module_name = entry_point.value.partition(":")[0].strip()
        info = PluginInfo(entry_point.name, distribution, version, module=module_name)
        registry.plugins.append(info)
        plugin_name = f"{distribution}:{entry_point.name}"
        try:
            module = entry_point.load()
            manager.register(module, name=plugin_name)
            problems = unmatched_hooks(manager, module)
            if problems:
                raise PluginError(" ".join(problems))
            records = _records_of(manager, plugin_name, loaded)
        except Exception as error:  # a broken plugin is reported, never fatal
            info.status, info.error = "error", _describe(error)
            if manager.has_plugin(plugin_name):
                manager.unregister(name=plugin_name)
            continue
        loaded.append(plugin_name)
        registry.components.extend(Component(record, info) for record in records)
    return registry


@functools.cache
def get_registry() -> Registry:
    """The process-wide registry: the only global state the host keeps."""
    return load_registry()

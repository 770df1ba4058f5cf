"""Exceptions raised inside a plugin's code, told as one paragraph that names the plugin.

A ``KeyError: 'layer9'`` from deep inside a method says nothing about where it came from.
The traceback does: its innermost frame in a plugin's package names the distribution, and
the registry knows which of that distribution's components this run resolved.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType

from adcore.infra.errors import PluginError
from adcore.plugins.registry import HOST_DISTRIBUTION, PluginInfo, Registry


def _package_root(module_name: str) -> Path | None:
    """Folder of the top-level package (or the file of a single-module plugin)."""
    module = sys.modules.get(module_name.partition(".")[0])
    file = getattr(module, "__file__", None)
    if not file:
        return None
    path = Path(file).resolve()
    return path.parent if path.name == "__init__.py" else path


def _frames(traceback: TracebackType | None) -> list[tuple[str, int, str]]:
    frames = []
    while traceback is not None:
        code = traceback.tb_frame.f_code
        frames.append((code.co_filename, traceback.tb_lineno, code.co_name))
        traceback = traceback.tb_next
    return frames


def _raising_plugin(
    error: BaseException, registry: Registry
) -> tuple[PluginInfo, Path, int, str] | None:
    """The plugin whose code is the innermost on ``error``'s traceback: (plugin, file,
    line, function), or None when no plugin's code is on it."""
    roots: list[tuple[Path, PluginInfo]] = []
    for plugin in registry.plugins:
        root = _package_root(plugin.module) if plugin.module else None
        if root is not None and plugin.distribution != HOST_DISTRIBUTION:
            roots.append((root, plugin))
    for filename, line, function in reversed(_frames(error.__traceback__)):
        path = Path(filename).resolve()
        for root, plugin in roots:
            if path == root or root in path.parents:
                return plugin, path, line, function
    return None


def plugin_failure(error: BaseException, registry: Registry) -> PluginError | None:
    """A :class:`PluginError` naming the component and distribution whose code raised
    ``error``, or None when no plugin's code is on the traceback (a host bug keeps its
    traceback)."""
    found = _raising_plugin(error, registry)
    if found is None:
        return None
    plugin, path, line, function = found
    return PluginError(
        f"{_components(registry, plugin)} from distribution {plugin.distribution} "
        f"{plugin.version} failed: {type(error).__name__}: {error} (in "
        f"{path.name}:{line}, {function}).",
        "The error is inside that plugin: check its settings in the config "
        "(`ad config show`), or report it to the plugin's authors with the "
        "traceback that AD_DEBUG=1 prints.",
    )


def plugin_source(error: BaseException, registry: Registry) -> str:
    """Where a user error (an ``AdError``) raised in a plugin's code came from:
    ``the method 'afclip' from distribution ad-afclip 0.1.0``; empty when not a plugin's."""
    found = _raising_plugin(error, registry)
    if found is None:
        return ""
    plugin = found[0]
    named = _components(registry, plugin).removeprefix("The ")
    return f"the {named} from distribution {plugin.distribution} {plugin.version}"


def _components(registry: Registry, plugin: PluginInfo) -> str:
    used = [c for c in registry.used if c.plugin is plugin]
    owned = used or [c for c in registry.components if c.plugin is plugin]
    if not owned:
        return f"The plugin {plugin.name!r}"
    named = " / ".join(f"{c.spec.kind} {c.spec.name!r}" for c in owned)
    return f"The {named}"

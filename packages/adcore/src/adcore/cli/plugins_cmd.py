"""``ad list-plugins``."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table

from adcore.cli.options import JsonOption
from adcore.cli.tables import print_table
from adcore.plugins.registry import Registry, get_registry


def list_plugins(as_json: JsonOption = False) -> None:
    """List every installed component, and every plugin that failed to load with its error."""
    rows = plugin_rows(get_registry())
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="ad plugins")
    for column in ("component", "kind", "distribution", "version", "status", "summary"):
        table.add_column(column, overflow="fold")
    for row in rows:
        status = "[green]ok[/]" if row["status"] == "ok" else "[red]error[/]"
        summary = row["summary"] or ""
        if row["capabilities"]:
            summary = f"{summary} [dim]({', '.join(row['capabilities'])})[/]"
        if row.get("not_exportable"):
            summary = f"{summary} [dim](not exportable: {row['not_exportable']})[/]"
        table.add_row(
            row["component"], row["kind"], row["distribution"], row["version"], status, summary
        )
    print_table(table, Console())


def plugin_rows(registry: Registry) -> list[dict[str, Any]]:
    """One row per component, then one per plugin that failed to load (``--json``'s list)."""
    rows = []
    for component in registry.components:
        spec = component.spec
        capabilities = sorted(c.value for c in getattr(spec, "capabilities", ()))
        rows.append(
            {
                "component": spec.name,
                "kind": spec.kind,
                "distribution": component.plugin.distribution,
                "version": component.plugin.version,
                "status": "ok",
                "capabilities": capabilities,
                "not_exportable": getattr(spec, "not_exportable", ""),
                "summary": spec.summary,
            }
        )
    for plugin in registry.plugins:
        if plugin.status == "error":
            rows.append(
                {
                    "component": plugin.name,
                    "kind": "plugin",
                    "distribution": plugin.distribution,
                    "version": plugin.version,
                    "status": "error",
                    "capabilities": [],
                    "summary": plugin.error,
                }
            )
    return rows

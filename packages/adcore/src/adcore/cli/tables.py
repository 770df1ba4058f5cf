"""Rich tables that stay readable in a log file or a pipe as well as on a terminal."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

LOG_WIDTH = 10_000  # wide enough that no cell wraps: one table row is one line


def print_table(table: Table, console: Console | None = None) -> None:
    """On a terminal, fit the table to the window; elsewhere (CI logs, ``| grep``), print
    every row on one line, without truncation or wrapping, and without colour codes: no box
    and no padding after the last cell, so a line is as long as its own row, not the
    longest one (the title is left-aligned for the same reason)."""
    console = console or Console()
    if console.is_terminal:
        console.print(table)
        return
    table.box, table.title_justify = None, "left"
    plain = Console(file=console.file, width=LOG_WIDTH, no_color=True, highlight=False)
    with plain.capture() as captured:
        plain.print(table)
    lines = [line.rstrip() for line in captured.get().splitlines()]
    console.file.write("\n".join(lines) + "\n")

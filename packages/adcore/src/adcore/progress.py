"""Progress display for long loops: rich bars on a terminal, silent in library use."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress


class Progress:
    """``task()`` yields an ``advance(n)`` callable; ``note()`` prints a line above the bars."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self._bars = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled,
            transient=True,
        )

    def __enter__(self) -> Progress:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.__exit__(*exc)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        task_id = self._bars.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            fields = {"status": status} if status is not None else {}
            self._bars.update(task_id, advance=n, **fields)

        try:
            yield advance
        finally:
            self._bars.remove_task(task_id)

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False)

"""Progress display for long loops: rich bars on a terminal, plain lines in a log (CI, a
pipe, ``nohup``), silent in library use."""

from __future__ import annotations

import contextlib
import time
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
    """``task()`` yields an ``advance(n)`` callable; ``note()`` prints a line above the bars.

    When the console is not a terminal, bars would print nothing until the end, so each task
    prints plain lines instead: when it starts, at most every ``interval`` seconds, and when
    it finishes (``predict: 40/120 (33%), 12 s``).
    """

    def __init__(
        self, enabled: bool = True, console: Console | None = None, interval: float = 10.0
    ) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)
        self.plain = enabled and not self.console.is_terminal
        self.interval = interval
        self._bars = RichProgress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not enabled or self.plain,
            transient=True,
        )

    def __enter__(self) -> Progress:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.__exit__(*exc)

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        if self.plain:
            with self._plain_task(description, total) as advance:
                yield advance
            return
        task_id = self._bars.add_task(description, total=total, status="")

        def advance(n: int = 1, status: str | None = None) -> None:
            fields = {"status": status} if status is not None else {}
            self._bars.update(task_id, advance=n, **fields)

        try:
            yield advance
        finally:
            self._bars.remove_task(task_id)

    @contextlib.contextmanager
    def _plain_task(self, description: str, total: int | None) -> Iterator[Callable[..., None]]:
        started = last = time.monotonic()
        done = 0

        def line(status: str | None = None) -> str:
            share = f" ({100 * done / total:.0f}%)" if total else ""
            extra = f", {status}" if status else ""
            seconds = time.monotonic() - started
            return f"{description}: {done}/{total or '?'}{share}, {seconds:.0f} s{extra}"

        def advance(n: int = 1, status: str | None = None) -> None:
            nonlocal done, last
            done += n
            now = time.monotonic()
            if now - last >= self.interval or (total is not None and done >= total):
                last = now
                self.note(line(status))

        self.note(f"{description}: started" + (f", {total} to do" if total else ""))
        yield advance
        if total is None or done < total:
            self.note(line())

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

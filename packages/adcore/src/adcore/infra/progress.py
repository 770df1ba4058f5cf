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
    it finishes (``predict: 40/120 (33%), 12 s``; a task without a known total, or one left
    before its total: ``fit: finished, 0 done, 3 s``).
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

        shown, latest = "", None  # the last line printed, the last status

        def line(status: str | None = None, end: str = "") -> str:
            count = f"{done}/{total} ({100 * done / total:.0f}%)" if total else f"{done} done"
            extra = f", {status}" if status else ""
            seconds = time.monotonic() - started
            return f"{description}: {end}{count}, {seconds:.0f} s{extra}"

        def advance(n: int = 1, status: str | None = None) -> None:
            nonlocal done, last, shown, latest
            done += n
            latest = status or latest
            now = time.monotonic()
            if now - last >= self.interval or (total is not None and 0 < total <= done):
                last = now
                shown = line(status)
                self.note(shown)

        self.note(f"{description}: started" + (f", {total} to do" if total else ""))
        yield advance
        if not (total and done >= total and shown):  # every task says that it finished
            self.note(line(latest, end="finished, "))

    def note(self, text: str) -> None:
        if self.enabled:
            self.console.print(text, highlight=False, soft_wrap=True)

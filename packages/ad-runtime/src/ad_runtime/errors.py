"""User-facing errors: each names the problem and the fix, and maps to an exit code.

The runtime's own kinds live here, at the bottom of everything; ``adcore.infra.errors``
adds the toolkit's (config, plugins, weights) on the same base.

The CLI prints these as one paragraph without a traceback (unless ``AD_DEBUG=1``); anything
else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AdError(Exception):
    """A problem the user can fix; ``hint`` says how."""

    exit_code = 1

    def __init__(self, problem: str, hint: str = "") -> None:
        problem = _unwrapped(problem, type(self))
        super().__init__(problem)
        self.problem = problem
        self.hint = hint

    def __str__(self) -> str:
        separator = "\n" if "\n" in self.problem else " "  # a list of problems, then the fix
        return f"{self.problem}{separator}{self.hint}".strip()


class UsageError(AdError):
    """Wrong command-line usage (exit code 2, as Typer/click use)."""

    exit_code = 2


class DataError(AdError):
    """A data set root, layout or file is missing or unreadable."""


class OutputError(AdError):
    """The results folder cannot be written, or holds a run with another config."""


class Interrupted(AdError):
    """Stopped by Ctrl-C (exit code 130, as shells report SIGINT)."""

    exit_code = 130


def _unwrapped(message: str, kind: type) -> str:
    """The original message of an error PyTorch re-raised from a DataLoader worker.

    PyTorch rebuilds the worker's exception as ``kind("Caught X in DataLoader worker process
    N.\nOriginal Traceback ...\nmodule.X: <message>")``; the user is owed ``<message>`` only
    (its problem and hint, already joined), as if it had been raised in this process.
    """
    if not message.startswith("Caught ") or "\nOriginal Traceback" not in message:
        return message
    marker = f"\n{kind.__module__}.{kind.__qualname__}: "
    at = message.rfind(marker)
    return message[at + len(marker) :].rstrip("\n") if at >= 0 else message

""" "Did you mean" for a misspelt name: the one close match among the names that exist."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

CUTOFF = 0.5  # difflib's ratio: 'patchcor' ~ 'patchcore' 0.94, 'budget' ~ 'budget_fraction' 0.57


def close_match(name: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``name`` (difflib's ratio at least :data:`CUTOFF`), or None."""
    found = difflib.get_close_matches(str(name), list(dict.fromkeys(choices)), n=1, cutoff=CUTOFF)
    return found[0] if found else None


def did_you_mean(name: str, choices: Iterable[str], lead: str = " Did you mean") -> str:
    """``" Did you mean 'x'?"`` (``lead`` and the match) when a close match exists, else ``""``."""
    match = close_match(name, choices)
    return f"{lead} {match!r}?" if match else ""

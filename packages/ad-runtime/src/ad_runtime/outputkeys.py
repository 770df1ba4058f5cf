"""Output keys made unique: no two images write the same file, even on case-insensitive
disks (``adcore.outputs.outputkeys`` builds a sample's key from its path with this)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def unique_keys(keys: Sequence[str], fallbacks: Sequence[str] | None = None) -> list[str]:
    """``keys`` with clashes (case-insensitive) resolved: first by ``fallbacks`` (same order,
    e.g. the name with its extension), then by a counter ``-2``, ``-3``, ..."""
    fallbacks = fallbacks or keys
    counts = Counter(k.casefold() for k in keys)
    chosen = [f if counts[k.casefold()] > 1 else k for k, f in zip(keys, fallbacks, strict=True)]
    taken: set[str] = set()
    out = []
    for key in chosen:
        candidate, number = key, 1
        while candidate.casefold() in taken:
            number += 1
            candidate = f"{key}-{number}"
        taken.add(candidate.casefold())
        out.append(candidate)
    return out

"""Output keys made unique: no two images write the same file, even on case-insensitive
disks (``adcore.outputs.outputkeys`` builds a sample's key from its path with this), and
short enough for every filesystem: a name over :data:`NAME_BYTES` bytes is cut and ends
with a digest of the whole, so it stays unique and the same from run to run."""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence

FILE_NAME_BYTES = 255  # the limit of ext4, APFS, NTFS and most others, per path component
NAME_BYTES = 200  # a key's components: room for what outputs add (".tiff", "_score0.8123.png")


def short_name(name: str, limit: int = NAME_BYTES) -> str:
    """``name`` itself when its UTF-8 takes at most ``limit`` bytes, else its longest head
    that fits with ``~`` and 10 hex digits of its SHA-256 (never splitting a character)."""
    encoded = name.encode("utf-8")
    if len(encoded) <= limit:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:10]
    head = encoded[: limit - len(digest) - 1].decode("utf-8", errors="ignore")
    return f"{head}~{digest}"


def short_key(key: str, limit: int = NAME_BYTES) -> str:
    """``key`` (``a/b/c``) with each component kept within ``limit`` bytes."""
    return "/".join(short_name(part, limit) for part in key.split("/"))


def unique_keys(keys: Sequence[str], fallbacks: Sequence[str] | None = None) -> list[str]:
    """``keys`` with each component within :data:`NAME_BYTES` (:func:`short_key`) and clashes
    (case-insensitive) resolved: first by ``fallbacks`` (same order, e.g. the name with its
    extension), then by a counter ``-2``, ``-3``, ..."""
    keys = [short_key(k) for k in keys]
    fallbacks = [short_key(f) for f in fallbacks] if fallbacks else keys
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

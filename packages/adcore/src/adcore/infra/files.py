"""Files written atomically, CSV text and writable folders: ``ad_runtime.files``'s, which the
torch-free runtime writes with too (one copy)."""

from __future__ import annotations

from ad_runtime.files import (
    FILE_MODE,
    atomic_write_bytes,
    atomic_write_text,
    csv_text,
    ensure_writable,
)

__all__ = ["FILE_MODE", "atomic_write_bytes", "atomic_write_text", "csv_text", "ensure_writable"]

"""Anomaly maps as files: float32 single-channel TIFFs, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ad_runtime.files import atomic_write_bytes


def write_map(path: Path, value: np.ndarray) -> None:
    """One map [H,W] as a float32 TIFF (PIL mode 'F'), values unchanged."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(value.astype(np.float32), mode="F").save(buffer, format="TIFF")
    atomic_write_bytes(path, buffer.getvalue())


def read_map(path: Path) -> np.ndarray:
    """A map written by :func:`write_map` -> float32 [H,W]."""
    from PIL import Image

    with Image.open(path) as stored:
        return np.asarray(stored, dtype=np.float32)

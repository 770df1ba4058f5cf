"""Anomaly maps as files: float32 single-channel TIFFs, written atomically."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from ad_runtime.files import atomic_write_bytes


def map_tiff(value: np.ndarray) -> bytes:
    """One map [H,W] as the bytes of a float32 TIFF (PIL mode 'F'), values unchanged."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(value.astype(np.float32), mode="F").save(buffer, format="TIFF")
    return buffer.getvalue()


def write_map(path: Path, value: np.ndarray) -> None:
    """One map [H,W] as a float32 TIFF file (:func:`map_tiff`), written atomically."""
    atomic_write_bytes(path, map_tiff(value))


def read_map(path: Path) -> np.ndarray:
    """A map written by :func:`write_map` -> float32 [H,W]."""
    from PIL import Image

    with Image.open(path) as stored:
        return np.asarray(stored, dtype=np.float32)

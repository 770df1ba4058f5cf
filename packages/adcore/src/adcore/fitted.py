"""A fitted method's state on disk (``<category>/model.pt``), for ``ad predict``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from adcore.method import Method
from adcore.results import atomic_write_bytes


def save_fitted_state(method: Method, path: Path) -> None:
    """``method.fitted_state()`` through ``torch.save``, written atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(method.fitted_state(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_fitted_state(path: Path) -> dict[str, Any]:
    """What :func:`save_fitted_state` wrote, loaded safely (``weights_only=True``)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)

"""A fitted method's state on disk (``<category>/model.pt``), for ``ad predict``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from adcore.contracts.method import Method
from adcore.infra.files import atomic_write_bytes
from adcore.toolkit.weights import stamp_fitted_state


def save_fitted_state(method: Method, path: Path) -> None:
    """``method.fitted_state()``, stamped with the weights identity it was fitted with, through
    ``torch.save``, written atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(stamp_fitted_state(method.fitted_state(), method.weights_identity()), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_fitted_state(path: Path) -> dict[str, Any]:
    """What :func:`save_fitted_state` wrote, loaded safely (``weights_only=True``)."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)

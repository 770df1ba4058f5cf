"""A fitted method's state on disk (``<category>/model.pt``), for ``ad predict``."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
from typing import Any

from ad_runtime.decoding import Decoding
from adcore.contracts.method import Method
from adcore.infra.files import atomic_write_bytes, atomic_write_text
from adcore.toolkit.weights import stamp_fitted_state

DECODING_FILE = "decoding.json"  # beside model.pt: the category's intensity range


def save_fitted_state(method: Method, path: Path) -> None:
    """``method.fitted_state()``, stamped with the weights identity it was fitted with, through
    ``torch.save``, written atomically."""
    import torch

    buffer = io.BytesIO()
    torch.save(stamp_fitted_state(method.fitted_state(), method.weights_identity()), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_fitted_state(path: Path) -> dict[str, Any]:
    """What :func:`save_fitted_state` wrote, loaded safely (``weights_only=True``).

    Raises ``DataError`` naming the file when it is missing, empty, truncated or not a
    fitted state (damaged, or replaced by another file)."""
    import torch

    from adcore.infra.errors import DataError

    fix = (
        "Fit the category again: rerun ad eval with --save-model --overwrite for this run "
        "(or restore the file from a copy)."
    )
    if not path.is_file():
        raise DataError(f"The fitted state {path} does not exist.", fix)
    if path.stat().st_size == 0:
        raise DataError(f"The fitted state {path} is empty (0 bytes).", fix)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch's untyped pickle, zip and tensor errors
        reason = " ".join(str(error).split())[:160] or type(error).__name__
        raise DataError(
            f"The fitted state {path} cannot be read: it is damaged or not a file that "
            f"ad eval --save-model wrote ({type(error).__name__}: {reason}).",
            fix,
        ) from None
    if not isinstance(state, dict):
        raise DataError(f"The fitted state {path} holds no fitted method.", fix)
    return state


def decoding_path(model_state: Path) -> Path:
    """``<category>/decoding.json`` beside the fitted state ``<category>/model.pt``."""
    return model_state.with_name(DECODING_FILE)


def save_decoding(decoding: Decoding, model_state: Path) -> None:
    """The category's decoding (its >8-bit intensity ranges, the pixel limit) beside its
    fitted state: part of the fitted model, so ``ad predict`` maps a 16-bit image as the
    run did instead of by its own inputs' range."""
    record = {key: list(v) if isinstance(v, tuple) else v
              for key, v in dataclasses.asdict(decoding).items()}  # fmt: skip
    atomic_write_text(decoding_path(model_state), json.dumps(record, indent=2) + "\n")


def read_decoding(model_state: Path) -> Decoding | None:
    """What :func:`save_decoding` wrote; None for a run saved before it was written."""
    path = decoding_path(model_state)
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    spans = {
        k: tuple(record[k]) if record.get(k) else None for k in ("integer_range", "float_range")
    }
    return Decoding(max_image_pixels=record.get("max_image_pixels"), **spans)

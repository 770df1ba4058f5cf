"""A trainable method's trained parts on disk: ``checkpoint.safetensors`` with its metadata.

The metadata (format, epoch, backbone weights identity, training settings) travels inside the
safetensors header and in a JSON sidecar, so ``model.checkpoint`` and ``ad train``'s resume can
refuse a file made for other backbone weights."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adcore.infra.errors import WeightsError
from adcore.infra.files import atomic_write_bytes

if TYPE_CHECKING:
    import torch


CHECKPOINT_NAME = "checkpoint.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
METADATA_KEY = "ad_training"
FORMAT = "ad-trainable/1"


def sidecar_path(checkpoint: Path) -> Path:
    """``checkpoint.safetensors`` -> ``checkpoint.json``."""
    return checkpoint.with_suffix(".json")


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The training record of a checkpoint: its safetensors metadata, else its sidecar JSON;
    empty when neither exists (a file not written by ``ad train``)."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as error:
            raise WeightsError(
                f"Checkpoint {path} cannot be read ({type(error).__name__}: {error}).",
                "Point model.checkpoint to a file written by `ad train`.",
            ) from None
        if METADATA_KEY in metadata:
            return json.loads(metadata[METADATA_KEY])
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    return {}


def trained_resolution(checkpoint: Path) -> int | None:
    """``model.resolution`` of the ``ad train`` run that wrote ``checkpoint`` (a file or its
    run folder); None when the file does not say (or cannot be read)."""
    path = checkpoint / CHECKPOINT_NAME if checkpoint.is_dir() else checkpoint
    try:
        record = checkpoint_metadata(path)
    except WeightsError:  # told when the method loads it
        return None
    model = (record.get("config") or {}).get("model") or {}
    value = model.get("resolution")
    return int(value) if isinstance(value, int) else None


def epoch_checkpoint_name(epoch: int) -> str:
    """The file an epoch listed in ``keep_epochs`` is kept under."""
    return f"checkpoint_epoch{epoch}.safetensors"


def save_checkpoint(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    record: dict[str, Any],
    optimizer_state: dict[str, Any],
    keep: bool = False,
) -> None:
    import torch
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    text = json.dumps(record, default=str)
    payload = save(tensors, metadata={METADATA_KEY: text})
    sidecar = json.dumps(record, indent=2, default=str).encode()
    names = [CHECKPOINT_NAME] + ([epoch_checkpoint_name(record["epoch"])] if keep else [])
    for name in names:
        atomic_write_bytes(out_dir / name, payload)
        atomic_write_bytes(sidecar_path(out_dir / name), sidecar)
    buffer = io.BytesIO()
    torch.save(optimizer_state, buffer)
    atomic_write_bytes(out_dir / OPTIMIZER_NAME, buffer.getvalue())

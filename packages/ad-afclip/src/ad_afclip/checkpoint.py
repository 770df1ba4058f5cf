"""Where AF-CLIP's and miniCLIP's trained parts come from: the authors' released files
(:mod:`ad_afclip.released`) or an ``ad train`` checkpoint (a safetensors file or run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ad_afclip import released
from adcore.api import WeightsError, checkpoint_metadata, load_checkpoint, require_same_weights

FORMATS = {"afclip": "afclip", "af_tiny": "miniclip"}  # released format -> method name


def released_parts(
    path: Path, method_format: str, epoch: int | None
) -> tuple[dict[str, torch.Tensor], list[Path]] | None:
    """The trained tensors and files of the authors' release at ``path`` in
    ``method_format`` (``afclip`` or ``af_tiny``); None when ``path`` is no release.
    Raises ``WeightsError`` for the other method's release."""
    kind = released.released_format(path) if path.exists() else None
    if kind is None:
        return None
    if kind != method_format:
        other = FORMATS[kind]
        raise WeightsError(
            f"{path} holds the released files of {other}, not of this method.",
            f"Evaluate them with --method {other}.",
        )
    if kind == "afclip":
        prompt, adaptor = released.afclip_pair(path)
        return released.load_afclip(prompt, adaptor), [prompt, adaptor]
    textual, visual, _ = released.af_tiny_pair(path, epoch)
    return released.load_af_tiny(textual, visual), [textual, visual]


def trained_parts(
    path: Path, epoch: int | None, backbone: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], Path]:
    """The tensors of an ``ad train`` checkpoint and its file; refused (``WeightsError``)
    when it was trained against other backbone weights than ``backbone`` (an identity)."""
    path = checkpoint_file(path, epoch)
    record = checkpoint_metadata(path)
    state = load_checkpoint(path)
    require_same_weights(
        record.get("weights_identity"),
        backbone,
        f"Checkpoint {path} was trained",
        "Set model.backbone and model.pretrained to the ones it was trained with, or "
        "train a checkpoint for this backbone with `ad train`.",
    )
    return state, path


def checkpoint_file(path: Path, epoch: int | None) -> Path:
    """An ``ad train`` run folder -> its checkpoint (of ``epoch`` when given); a file as is."""
    if not path.is_dir():
        return path
    name = f"checkpoint_epoch{epoch}.safetensors" if epoch else "checkpoint.safetensors"
    if not (path / name).is_file():
        kept = sorted(p.name for p in path.glob("checkpoint*.safetensors"))
        raise WeightsError(
            f"{path} has no {name} (it has {kept or 'no checkpoint'}).",
            "Point model.checkpoint to a checkpoint file or `ad train` run folder, and "
            "model.checkpoint_epoch to an epoch that was kept.",
        )
    return path / name

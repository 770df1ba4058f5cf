"""The open_clip model behind WinCLIP: a pretrained tag (Hugging Face cache), a local
checkpoint file, or random initialisation."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ad_winclip.model import Tokenizer
from adcore.errors import ConfigError, WeightsError
from adcore.weights import (
    file_digest,
    hf_cache_dir,
    load_checkpoint,
    missing_weights,
    parse_weights,
)


def load_clip(
    backbone: str, pretrained: str, resolution: int, seed: int = 0
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """Build an open_clip model with its weights -> (model in eval, tokenizer, identity)."""
    import open_clip

    if backbone not in open_clip.list_models():
        raise ConfigError(
            f"model.backbone {backbone!r} is not an open_clip model.",
            "Use a name from open_clip.list_models(), e.g. ViT-B-16-plus-240.",
        )
    source = parse_weights(pretrained)
    identity: dict[str, Any] = {
        "backbone": backbone,
        "pretrained": source.value,
        "random": source.is_random,
    }
    if source.kind == "tag":
        tags = open_clip.list_pretrained_tags_by_model(backbone)
        if source.value not in tags:
            raise ConfigError(
                f"model.pretrained {source.value!r} is not an open_clip tag for {backbone}.",
                f"Use one of {tags}, a local checkpoint path, or 'none'.",
            )
        try:
            clip = open_clip.create_model(
                backbone,
                pretrained=source.value,
                force_image_size=resolution,
                cache_dir=str(hf_cache_dir()),
            )
        except Exception as error:
            raise missing_weights(
                backbone,
                source.value,
                f"{type(error).__name__}: {error}",
                f'Fetch them once with network access: python -c "import open_clip; '
                f"open_clip.create_model('{backbone}', pretrained='{source.value}')\", then "
                "rerun (HF_HUB_OFFLINE=1 works afterwards).",
            ) from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            clip = open_clip.create_model(backbone, pretrained=None, force_image_size=resolution)
        if source.kind == "file":
            _load_file(clip, source.path, backbone)
            identity["digest"] = file_digest(source.path)
    clip.eval().requires_grad_(False)
    return clip, open_clip.get_tokenizer(backbone), identity


def _load_file(clip: nn.Module, path: Any, backbone: str) -> None:
    from open_clip.model import resize_pos_embed

    state = load_checkpoint(path)
    state = {key.removeprefix("module."): value for key, value in state.items()}
    resize_pos_embed(state, clip)
    try:
        clip.load_state_dict(state)
    except RuntimeError as error:
        raise WeightsError(
            f"Checkpoint {path} does not fit open_clip {backbone} ({str(error)[:300]}).",
            "Point model.pretrained to a checkpoint of that architecture, or change "
            "model.backbone to match the checkpoint.",
        ) from None

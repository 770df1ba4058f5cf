"""The open_clip model behind WinCLIP: a pretrained tag (Hugging Face cache), a local
checkpoint file, or random initialisation."""

from __future__ import annotations

from typing import Any

from torch import nn

from ad_winclip.model import Tokenizer
from adcore.api import QuickGelu, load_open_clip


def load_clip(
    backbone: str,
    pretrained: str,
    resolution: int,
    seed: int = 0,
    quick_gelu: QuickGelu | str | bool = "auto",
) -> tuple[nn.Module, Tokenizer, dict[str, Any]]:
    """Build an open_clip model with its weights -> (model in eval, tokenizer, identity)."""
    import open_clip

    clip, identity = load_open_clip(
        backbone, pretrained, image_size=resolution, seed=seed, quick_gelu=quick_gelu
    )
    return clip, open_clip.get_tokenizer(backbone), identity

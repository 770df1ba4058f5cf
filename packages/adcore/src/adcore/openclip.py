"""open_clip models from a pretrained tag (Hugging Face cache), a local checkpoint file, or
random initialisation: the one loader of every CLIP-based method.

open_clip is imported only when a model is loaded; the method plugins that call this
depend on ``open_clip_torch`` themselves, so the host does not.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from adcore.errors import ConfigError, WeightsError
from adcore.weights import (
    file_digest,
    hf_cache_dir,
    load_checkpoint,
    missing_weights,
    parse_weights,
)


def load_open_clip(
    backbone: str,
    pretrained: str | None,
    *,
    image_size: int | None = None,
    seed: int | None = None,
    strip_prefixes: Sequence[str] = ("module.",),
) -> tuple[Any, dict[str, Any]]:
    """-> (open_clip CLIP in eval mode with every parameter frozen, weights identity).

    ``image_size`` builds the visual tower for that input (positional embedding resized);
    ``seed`` makes random initialisation independent of the global RNG; ``strip_prefixes``
    are wrapper prefixes removed from a local checkpoint's keys (the first that matches).
    """
    import open_clip
    import torch

    if backbone not in open_clip.list_models():
        raise ConfigError(
            f"model.backbone {backbone!r} is not an open_clip architecture.",
            "Use a name from open_clip.list_models(), e.g. ViT-B-16-plus-240 or ViT-L-14-336.",
        )
    source = parse_weights(pretrained)
    identity: dict[str, Any] = {
        "backbone": backbone,
        "pretrained": source.value,
        "random": source.is_random,
    }
    size = {"force_image_size": image_size} if image_size else {}
    if source.kind == "tag":
        tag_cfg = open_clip.get_pretrained_cfg(backbone, source.value)
        if not tag_cfg:
            raise ConfigError(
                f"model.pretrained {source.value!r} is not an open_clip tag for {backbone}.",
                f"Known tags: {open_clip.list_pretrained_tags_by_model(backbone) or 'none'}; "
                "or give a local checkpoint path, or 'none' for random weights.",
            )
        try:
            model = open_clip.create_model(
                backbone,
                pretrained=source.value,
                force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
                cache_dir=str(hf_cache_dir()),
                **size,
            )
        except Exception as error:
            raise missing_weights(
                backbone,
                source.value,
                f"{type(error).__name__}: {error}",
                'Fetch them once with network access: python -c "import open_clip; '
                f"open_clip.create_model('{backbone}', pretrained='{source.value}')\", then "
                "rerun (HF_HUB_OFFLINE=1 works afterwards).",
            ) from None
    else:
        rng = torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext()
        with rng:
            if seed is not None:
                torch.manual_seed(seed)
            model = open_clip.create_model(backbone, pretrained=None, **size)
        if source.kind == "file":
            load_state(model, source.path, backbone, strip_prefixes)
            identity["digest"] = file_digest(source.path)
    model.eval().requires_grad_(False)
    return model, identity


def load_state(model: Any, path: Path, backbone: str, strip_prefixes: Sequence[str]) -> None:
    """A local checkpoint into ``model``: prefixes stripped, positional embedding resized."""
    from open_clip.factory import resize_pos_embed

    state = {}
    for key, value in load_checkpoint(path).items():
        prefix = next((p for p in strip_prefixes if key.startswith(p)), "")
        state[key[len(prefix) :]] = value
    scale = state.get("logit_scale")
    if scale is not None and scale.ndim != model.logit_scale.ndim:
        state["logit_scale"] = scale.reshape(model.logit_scale.shape)
    resize_pos_embed(state, model)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsError(
            f"Checkpoint {path} does not fit the open_clip architecture {backbone} "
            f"({str(error).splitlines()[0][:300]}).",
            "Set model.backbone to the architecture the checkpoint was trained with, or point "
            "model.pretrained to a checkpoint of this one.",
        ) from None

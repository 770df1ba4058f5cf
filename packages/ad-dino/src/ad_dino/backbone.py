"""The timm DINOv2 ViT and where its weights come from (a timm tag, a local file, or none)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from adcore.api import (
    ConfigError,
    PluginError,
    WeightsError,
    backbone_identity,
    captured_output,
    fit_state,
    hub_file,
    parse_weights,
    read_checkpoint,
)

# timm's files on the hub, in the order timm tries them.
HF_WEIGHT_FILES = ["model.safetensors", "pytorch_model.bin"]


def _create(name: str, **kwargs: Any) -> nn.Module:
    """A timm ViT without a head, refusing anything that is not a patch-embedding ViT."""
    try:
        model = timm.create_model(name, num_classes=0, **kwargs)
    except RuntimeError:
        raise  # a state dict that does not fit: the caller names the file
    except Exception as error:
        raise PluginError(
            f"timm cannot build {name!r} ({error}).",
            "Set model.backbone to a timm DINOv2 ViT, e.g. vit_small_patch14_dinov2.",
        ) from None
    from timm.models.vision_transformer import VisionTransformer

    usable = (
        isinstance(model, VisionTransformer)
        and isinstance(getattr(model.patch_embed, "proj", None), nn.Conv2d)
        and model.pos_embed is not None
        and model.cls_token is not None
    )
    if not usable:
        raise ConfigError(
            f"model.backbone {name!r} is not a ViT with a class token, a patch embedding "
            "and a learned position table, which AnomalyDINO reads its patch tokens from.",
            "Use a timm DINOv2 ViT, e.g. vit_small_patch14_dinov2.",
        )
    return model


def build_vit(
    backbone: str, pretrained: str, seed: int, **architecture: Any
) -> tuple[nn.Module, dict[str, Any]]:
    """A frozen timm ViT and its weights identity.

    A tag's file is found through :func:`adcore.api.hub_file` (cache first) and handed to
    timm as a state dict; a local file goes through timm's own checkpoint filter first, so
    DINOv2's released ``*_pretrain.pth`` files load too. ``architecture`` overrides timm's
    model arguments (the tests build tiny DINOv2-shaped models this way). Random
    initialisation is seeded.
    """
    if not timm.is_model(backbone):
        raise ConfigError(
            f"model.backbone {backbone!r} is not a timm model.",
            "Set model.backbone to a timm DINOv2 ViT, e.g. vit_small_patch14_dinov2 or "
            "vit_base_patch14_dinov2.",
        )
    source = parse_weights(pretrained)
    messages: list[str] = []
    path = None
    if source.kind == "tag":
        path = _tag_file(backbone, source.value)
        state = read_checkpoint(path)
        with captured_output(messages):
            try:
                model = _create(
                    f"{backbone}.{source.value}",
                    pretrained=True,
                    pretrained_cfg_overlay={"state_dict": state},
                    **architecture,
                )
            except RuntimeError as error:
                raise WeightsError(
                    f"The file {path} of {backbone}.{source.value} does not fit the "
                    f"architecture ({str(error).splitlines()[0][:200]}).",
                    "Delete that file from the cache and fetch it again.",
                ) from None
    else:
        with torch.random.fork_rng(devices=[]), captured_output(messages):
            torch.manual_seed(seed)
            model = _create(backbone, pretrained=False, **architecture)
        if source.kind == "file":
            path = source.path
            state = read_checkpoint(path)
            from timm.models.vision_transformer import checkpoint_filter_fn

            try:
                state = checkpoint_filter_fn(state, model)
            except Exception as error:
                raise WeightsError(
                    f"Checkpoint {path} cannot be read as {backbone} weights ({error}).",
                    "Point model.pretrained to a timm or DINOv2 checkpoint of this model.",
                ) from None
            fit_state(model, state, path=path, architecture=backbone, ignore_unexpected=True)
    model.eval().requires_grad_(False)
    identity = backbone_identity(
        model, architecture=backbone, source=source, file=path, messages=messages
    )
    return model, identity


def _tag_file(backbone: str, tag: str) -> Path:
    """The file of timm's ``backbone.tag`` on the Hugging Face hub, cache first."""
    name = f"{backbone}.{tag}"
    try:
        cfg = timm.models.get_pretrained_cfg(name)
    except Exception:
        cfg = None
    if cfg is None or not cfg.hf_hub_id:
        known = timm.list_pretrained(f"{backbone}.*")
        raise ConfigError(
            f"model.pretrained {tag!r} is not a timm tag of {backbone} on the Hugging Face hub.",
            f"Use one of {[k.split('.', 1)[1] for k in known][:8]}, a local checkpoint path, "
            "or 'none' for random weights.",
        )
    repo_id, _, revision = cfg.hf_hub_id.partition("@")
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else HF_WEIGHT_FILES
    return hub_file(
        repo_id,
        names,
        revision=revision or None,
        what=f"The timm weights {name!r}",
        how=(
            f'Fetch them once with network access (python -c "import timm; '
            f"timm.create_model('{name}', pretrained=True)\"), or copy the Hugging Face "
            f"repository {repo_id} into that cache."
        ),
    )

"""The timm feature extractor: layer names to ``out_indices``, and where its weights come from."""

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


def resolve_out_indices(module_names: list[str], layers: list[str]) -> tuple[int, ...]:
    """Map stage names (``layer2``) to timm ``out_indices`` via ``feature_info`` module names."""
    indices = []
    for layer in layers:
        if layer not in module_names:
            raise ConfigError(
                f"Layer {layer!r} is not a feature stage of this backbone.",
                f"Set model.layers to names from {module_names}.",
            )
        indices.append(module_names.index(layer))
    if indices != sorted(indices) or len(set(indices)) != len(indices):
        raise ConfigError(
            f"model.layers {layers} must name distinct stages from shallow to deep.",
            f"Order them as in {module_names}.",
        )
    return tuple(indices)


def _feature_names(backbone: str) -> list[str]:
    """Stage names without allocating weights (the model is built on the meta device)."""
    try:
        with torch.device("meta"):
            probe = timm.create_model(backbone, pretrained=False, features_only=True)
    except Exception as error:
        raise PluginError(
            f"timm cannot build {backbone!r} as a feature extractor ({error}).",
            "Set model.backbone to a timm CNN that supports features_only, e.g. "
            "wide_resnet50_2 or resnet18.",
        ) from None
    return list(probe.feature_info.module_name())


def build_backbone(
    backbone: str, pretrained: str, layers: list[str], seed: int
) -> tuple[nn.Module, dict[str, Any]]:
    """A frozen ``features_only`` network returning ``layers``, and its weights identity.

    A tag's file is found through :func:`adcore.api.hub_file` (cache first) and handed to
    timm as a state dict, so timm applies its own conversion for the architecture; a local
    file is fitted with the shared checkpoint normaliser (a classifier head it holds is
    ignored). Random initialisation is seeded, so two builds with the same seed are the same
    network.
    """
    indices = resolve_out_indices(_feature_names(backbone), layers)
    source = parse_weights(pretrained)
    kwargs: dict[str, Any] = {"features_only": True, "out_indices": indices}
    messages: list[str] = []
    path = None
    if source.kind == "tag":
        path = _tag_file(backbone, source.value)
        state = read_checkpoint(path)
        with captured_output(messages):
            try:
                model = timm.create_model(
                    f"{backbone}.{source.value}",
                    pretrained=True,
                    pretrained_cfg_overlay={"state_dict": state},
                    **kwargs,
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
            model = timm.create_model(backbone, pretrained=False, **kwargs)
        if source.kind == "file":
            path = source.path
            state = read_checkpoint(path)
            fit_state(model, state, path=path, architecture=backbone, ignore_unexpected=True)
    model.eval().requires_grad_(False)
    identity = backbone_identity(
        model,
        architecture=backbone,
        source=source,
        file=path,
        messages=messages,
        layers=list(layers),
    )
    return model, identity


def authors_batchnorm_step(backbone: nn.Module, size: tuple[int, int]) -> None:
    """Replay the forward pass the released code makes while building its model.

    ``PatchCore.load`` asks ``NetworkFeatureAggregator.feature_dimensions`` for the channel
    counts by pushing one all-ones image [1, 3, H, W] (H, W: the input size) through the
    backbone, which is still in train mode there; every BatchNorm up to the deepest
    extracted stage moves its running statistics one momentum step towards that image's
    statistics, and every number published with that code carries the change. The backbone
    is left in eval mode, frozen.
    """
    device = next(backbone.parameters()).device
    backbone.train()
    with torch.no_grad():
        backbone(torch.ones(1, 3, *size, device=device))
    backbone.eval()


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

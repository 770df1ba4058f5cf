"""The timm feature extractor: layer names to ``out_indices``, and where its weights come from."""

from __future__ import annotations

from typing import Any

import timm
import torch
from torch import nn

from adcore.api import (
    ConfigError,
    PluginError,
    WeightsError,
    load_checkpoint,
    missing_weights,
    parse_weights,
    tensors_digest,
)


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

    Random initialisation is seeded, so two builds with the same seed are the same network.
    """
    indices = resolve_out_indices(_feature_names(backbone), layers)
    source = parse_weights(pretrained)
    kwargs = {"features_only": True, "out_indices": indices}
    if source.kind == "tag":
        name = f"{backbone}.{source.value}"
        try:
            model = timm.create_model(name, pretrained=True, **kwargs)
        except Exception as error:
            raise missing_weights(
                backbone,
                name,
                f"{type(error).__name__}: {error}",
                f'Download them once with network access: python -c "import timm; '
                f"timm.create_model('{name}', pretrained=True)\", or copy the Hugging Face "
                f"repository timm/{name} into that cache.",
            ) from None
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = timm.create_model(backbone, pretrained=False, **kwargs)
        if source.kind == "file":
            _load_file(model, source.path, backbone)
    model.eval().requires_grad_(False)
    identity = {
        "backbone": backbone,
        "pretrained": source.value,
        "random": source.is_random,
        "layers": list(layers),
        "digest": tensors_digest(model.state_dict()),
    }
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


def _load_file(model: nn.Module, path: Any, backbone: str) -> None:
    """Load a full-classifier or features-only state dict; stages we do not run may be absent."""
    state = load_checkpoint(path)
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise WeightsError(
            f"Checkpoint {path} does not fit {backbone} ({str(error).splitlines()[0]}).",
            "Point model.pretrained to a state dict of the same timm/torchvision architecture.",
        ) from None
    if missing:
        raise WeightsError(
            f"Checkpoint {path} lacks {len(missing)} tensors that {backbone} needs "
            f"(e.g. {missing[:3]}).",
            "Point model.pretrained to a state dict of the same timm/torchvision architecture.",
        )

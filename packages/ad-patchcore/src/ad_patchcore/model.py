"""PatchCore's algorithm (Roth et al., CVPR 2022) as plain modules and functions.

Patch features follow the authors' code (amazon-science/patchcore-inspection): each layer's
map is unfolded into ``p x p`` neighbourhoods (zero padding, stride 1), each neighbourhood's
flattened ``C*p*p`` vector is adaptive-average-pooled to ``pretrain_embed_dimension``
(``Preprocessing``/``MeanMapper``), deeper layers are upsampled bilinearly to the first
layer's grid, and the stacked layers are pooled once more to ``target_embed_dimension``
(``Aggregator``). When ``C*p*p`` is a multiple of the pooled size times ``p*p`` (layer3 of
wide_resnet50_2: 1024 channels -> 1024) this is exactly a ``p x p`` average pool per channel
(paper eq. 2); otherwise each bin averages consecutive (channel, position) entries, as the
authors' code does. Pooling and upsampling act on different axes, so doing the pooling first
(cheaper) gives the authors' numbers, up to float rounding (2e-7 relative).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


def local_aggregation(features: torch.Tensor, patch_size: int, dim: int) -> torch.Tensor:
    """Paper eq. 2 with the authors' f_agg: unfold p x p, adaptive average pool to ``dim``."""
    # [B, C, H, W] -> [B, dim, H, W]
    b, _, h, w = features.shape
    unfolded = F.unfold(features, kernel_size=patch_size, padding=(patch_size - 1) // 2)
    # [B, C*p*p, H*W]: pool along the feature axis only (output width = input width)
    pooled = F.adaptive_avg_pool2d(unfolded.unsqueeze(1), (dim, h * w)).squeeze(1)
    return pooled.reshape(b, dim, h, w)


class LocallyAwarePatchFeatures(nn.Module):
    """Backbone stages -> one ``target_dim`` feature per patch of the first stage's grid."""

    def __init__(
        self,
        backbone: nn.Module,
        patch_size: int,
        pretrain_dim: int,
        target_dim: int,
        backbone_autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext
        ),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        # reduced precision for the CNN only (``Runtime.backbone_autocast``)
        self.backbone_autocast = backbone_autocast
        self.patch_size = patch_size
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images -> patch features and the patch grid."""
        # [B, 3, H, W] -> [B, h*w, D], (h, w)
        with self.backbone_autocast():
            raw = self.backbone(images)
        maps = [m.float() for m in raw]
        grid = tuple(maps[0].shape[-2:])
        layers = []
        for feature_map in maps:
            pooled = local_aggregation(feature_map, self.patch_size, self.pretrain_dim)
            if tuple(pooled.shape[-2:]) != grid:
                pooled = F.interpolate(pooled, size=grid, mode="bilinear", align_corners=False)
            layers.append(pooled.flatten(2))  # [B, pretrain_dim, h*w]
        stacked = torch.cat(layers, dim=1)  # [B, L*pretrain_dim, h*w]
        merged = F.adaptive_avg_pool2d(stacked.unsqueeze(1), (self.target_dim, stacked.shape[-1]))
        return merged.squeeze(1).transpose(1, 2).contiguous(), (grid[0], grid[1])


def reweighted_score(
    max_score: torch.Tensor, nearest_distance: torch.Tensor, neighbourhood: torch.Tensor
) -> torch.Tensor:
    """Paper eq. 7: s = (1 - exp||m_test,* - m*|| / sum_{m in N_b(m*)} exp||m_test,* - m||) s*.

    ``nearest_distance`` is ||m_test,* - m*||; ``neighbourhood`` holds ||m_test,* - m|| for
    the b nearest memory features m of m* (m* itself among them, as in anomalib). The
    authors' released code does not implement this re-weighting (its image score is the
    maximum patch score), hence ``scoring: max`` by default. Computed in log space.
    """
    # [B], [B], [B, b] -> [B]
    ratio = torch.exp(nearest_distance - torch.logsumexp(neighbourhood, dim=1))
    return (1.0 - ratio) * max_score

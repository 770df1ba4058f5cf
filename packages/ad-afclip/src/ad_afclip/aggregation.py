"""Multi-scale spatial aggregation (AF-CLIP, Sec. 3.2).

Each patch token is replaced by a Gaussian-weighted sum over its r x r neighbourhood, for
every r in a set of radii ({1, 3, 5} in the paper), so anomalies of different sizes reach
the adaptor with context; the class token is kept as it is. Outside the grid counts as zero
(as the authors' unfold), so border tokens get the weights that fall inside.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def gaussian_kernel(size: int, sigma: float) -> torch.Tensor:
    """[size, size] Gaussian weights summing to one; size 1 is the identity."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    grid = offsets[:, None] ** 2 + offsets[None, :] ** 2
    kernel = torch.exp(-grid / (2 * sigma**2))
    return (kernel / kernel.sum()).float()


def aggregation_weights(radii: list[int], sigma: float) -> torch.Tensor:
    """[R, K, K] kernels, each centred in the largest size K so one conv serves all radii."""
    size = max(radii)
    weights = torch.zeros(len(radii), size, size)
    for index, radius in enumerate(radii):
        start = (size - radius) // 2
        weights[index, start : start + radius, start : start + radius] = gaussian_kernel(
            radius, sigma
        )
    return weights


def spatial_aggregation(tokens: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """[L, B, 1+N, C] tokens of L layers, [R, K, K] kernels -> [L*R, B, 1+N, C].

    One depthwise convolution (groups = channels, R outputs per channel) on the square grid;
    the class token (index 0) is copied into every aggregated set. Sets are ordered layer
    major: (layer 0, r 0), (layer 0, r 1), ...
    """
    layers, batch, length, channels = tokens.shape
    side = round((length - 1) ** 0.5)
    radii, size, _ = weights.shape
    grid = tokens[:, :, 1:].reshape(layers * batch, side, side, channels).permute(0, 3, 1, 2)
    kernel = weights.to(grid.dtype).repeat(channels, 1, 1).unsqueeze(1)  # [C*R, 1, K, K]
    out = F.conv2d(grid, kernel, padding=size // 2, groups=channels)  # [L*B, C*R, h, w]
    out = out.reshape(layers, batch, channels, radii, side * side).permute(0, 3, 1, 4, 2)
    cls = tokens[:, None, :, :1].expand(layers, radii, batch, 1, channels)
    merged = torch.cat([cls, out], dim=3)  # [L, R, B, 1+N, C]
    return merged.reshape(layers * radii, batch, length, channels)

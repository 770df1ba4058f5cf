"""From a patch grid to an anomaly map at the input size: one implementation for every method.

PatchCore and AF-CLIP upsample bilinearly and smooth with a Gaussian (sigma 4), as their
authors do with ``scipy.ndimage.gaussian_filter``; WinCLIP only upsamples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def upsample(maps: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [B, h, w] to [B, H, W] (``size`` an int for square maps)."""
    target = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(maps.shape[-2:]) == target:
        return maps
    return F.interpolate(maps[:, None], size=target, mode="bilinear", align_corners=False)[:, 0]


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian with ``scipy.ndimage.gaussian_filter``'s kernel and 'reflect'
    (half-sample mirror) borders, batched on the device."""
    # [B, H, W] -> [B, H, W]
    if sigma <= 0:
        return maps
    radius = int(truncate * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, device=maps.device, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(maps.dtype)
    out = maps
    for axis in (1, 2):
        size = out.shape[axis]
        index = torch.arange(-radius, size + radius, device=maps.device) % (2 * size)
        index = torch.where(index < size, index, 2 * size - 1 - index)  # half-sample mirror
        lines = out.index_select(axis, index).movedim(axis, -1)  # [B, other, size + 2r]
        shape = lines.shape
        filtered = F.conv1d(lines.reshape(-1, 1, shape[-1]), kernel.view(1, 1, -1))
        out = filtered.reshape(*shape[:-1], size).movedim(-1, axis)
    return out


def anomaly_map(
    patch_scores: torch.Tensor, size: int | tuple[int, int], sigma: float
) -> torch.Tensor:
    """Patch scores [B, h, w] upsampled to [B, H, W] (``size``: H = W, or (H, W)), then
    Gaussian-smoothed."""
    return gaussian_blur(upsample(patch_scores, size), sigma)

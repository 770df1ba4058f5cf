"""Sliding windows on the patch grid and their harmonic aggregation (WinCLIP Sec. 4.2).

A k x k window with stride 1 on an h x w grid of patches is a set of k*k patch indices
(row-major). Each patch's score at one scale is the harmonic mean of the scores of the
windows covering it (paper Eq. 3), so that a patch counts as anomalous only when every
window around it does; scales and the image-level score are fused the same way.
"""

from __future__ import annotations

import torch


def window_indices(grid: tuple[int, int], k: int) -> torch.Tensor:
    """Patch indices of every k x k window, stride 1, windows and patches row-major.

    -> long [W, k*k] with W = (h-k+1)(w-k+1).
    """
    h, w = grid
    if not 1 <= k <= min(h, w):
        raise ValueError(f"window size {k} does not fit the {h}x{w} patch grid")
    rows = torch.arange(h - k + 1).view(-1, 1, 1, 1) + torch.arange(k).view(1, 1, -1, 1)
    cols = torch.arange(w - k + 1).view(1, -1, 1, 1) + torch.arange(k).view(1, 1, 1, -1)
    return (rows * w + cols).reshape(-1, k * k)  # [W, k*k]


def covering_windows(grid: tuple[int, int], k: int) -> torch.Tensor:
    """For each patch, the windows covering it, padded with the sentinel W (one past the end).

    -> long [P, k*k]; a patch near the border is covered by fewer than k*k windows.
    """
    h, w = grid
    wh, ww = h - k + 1, w - k + 1
    top = torch.arange(h).view(-1, 1, 1, 1) - torch.arange(k).view(1, 1, -1, 1)  # window row
    left = torch.arange(w).view(1, -1, 1, 1) - torch.arange(k).view(1, 1, 1, -1)  # window col
    valid = (top >= 0) & (top < wh) & (left >= 0) & (left < ww)
    index = torch.where(valid, top * ww + left, wh * ww)
    return index.reshape(h * w, k * k)  # [P, k*k]


def harmonic_aggregation(scores: torch.Tensor, covering: torch.Tensor) -> torch.Tensor:
    """Per-patch harmonic mean of the covering windows' scores (paper Eq. 3).

    scores [B, W] (non-negative), covering [P, C] from ``covering_windows`` -> [B, P].
    A zero score gives a zero mean (1/0 = inf is summed, never multiplied by zero).
    """
    scores = scores.float()
    reciprocal = torch.cat([1.0 / scores, scores.new_zeros(scores.shape[0], 1)], dim=1)
    total = reciprocal[:, covering].sum(dim=-1)  # [B, P]
    count = (covering < scores.shape[1]).sum(dim=-1).to(scores)  # [P]
    return count / total


def harmonic_mean(values: torch.Tensor, dim: int) -> torch.Tensor:
    """Harmonic mean along ``dim`` of non-negative values; any zero makes it zero."""
    values = values.float()
    return values.shape[dim] / (1.0 / values).sum(dim=dim)

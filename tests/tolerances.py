"""Tolerances derived from the computation a test checks, never from one run's noise.

A sum (or dot product) of ``n`` terms computed in floating point differs from the exact one
by at most ``gamma_n * sum|terms|``, ``gamma_n = n u / (1 - n u)``, ``u = eps / 2`` the unit
roundoff (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., lemma 3.1 and
eq. 3.5). Two computations of the same value in different orders are each within that bound
of the exact value, so they differ by at most twice it. ``SAFETY`` covers the few
elementwise steps around a reduction (a scale, a subtraction, a square root) that the bound
does not count; it is a documented constant, not a fit to a measurement.
"""

from __future__ import annotations

import numpy as np
import torch

SAFETY = 4.0


def unit_roundoff(dtype: torch.dtype | np.dtype | type) -> float:
    """``u = eps / 2`` of a torch or numpy floating dtype."""
    if isinstance(dtype, torch.dtype):
        return torch.finfo(dtype).eps / 2
    return float(np.finfo(dtype).eps) / 2


def sum_bound(dtype: torch.dtype | np.dtype | type, terms: int, magnitude: float) -> float:
    """How far two evaluations of a ``terms``-term sum whose absolute values add up to
    ``magnitude`` may lie apart: ``2 * SAFETY * gamma_terms * magnitude``."""
    nu = max(terms, 1) * unit_roundoff(dtype)
    assert nu < 0.5, "the bound needs n * u well below 1"
    return 2 * SAFETY * nu / (1 - nu) * magnitude


def widest_reduction(module: torch.nn.Module) -> int:
    """The longest dot product of a network's layers: in-features of a linear layer, or
    in-channels per group times the kernel area of a convolution."""
    widths = [1]
    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            widths.append(layer.in_features)
        elif isinstance(layer, torch.nn.modules.conv._ConvNd):
            widths.append(layer.in_channels // layer.groups * int(np.prod(layer.kernel_size)))
    return max(widths)

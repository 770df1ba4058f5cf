"""Approximate greedy coreset (paper Sec. 3.2, Alg. 1; authors' ApproximateGreedyCoresetSampler).

Greedy k-center selection on features randomly projected to 128 dimensions (Johnson-
Lindenstrauss). As in the authors' code, the running distance starts as each feature's mean
Euclidean distance to a few random starting points instead of an N x N matrix, and each step
adds the feature farthest from everything chosen so far.

The choice is the released sampler's, index for index: the projection is the weight an
untrained ``nn.Linear(D, 128, bias=False)`` draws after ``torch.manual_seed(seed)`` (skipped
when D is already 128), the starting points are ``np.random.choice(N, 10, replace=False)``
after ``np.random.seed(seed)``, and every distance is computed with the same floating-point
operations in the same order (``-2ab + aa + bb``, clamped, square-rooted), so even near-ties
resolve as theirs do. Their run script seeds once per category and then builds the backbone
and a data loader before the sampler draws; those unrelated draws are not replayed, so the
seed here is the state of the random generators when the sampler starts. What differs is the
cost: one matrix-vector product and a few in-place passes over N values per step instead of
re-computing every norm and concatenating, O(N) memory beyond the projected features.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@contextlib.contextmanager
def _one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Each greedy step is a few memory-bound passes over N values; on a CPU, forking
    threads for them costs more than it saves, and on a busy machine it spins (10x slower)."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def random_projection(
    in_dim: int, out_dim: int, seed: int, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The [out_dim, in_dim] weight of the authors' untrained ``nn.Linear`` (Kaiming uniform,
    a = sqrt(5)) drawn on the CPU from ``seed``; apply it with ``F.linear``."""
    weight = torch.empty(out_dim, in_dim)
    generator = torch.Generator().manual_seed(seed)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight.to(device)


def project(features: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Features through the projection (``mapper(features)`` in the authors' sampler)."""
    # [N, D], [d, D] -> [N, d]
    return features if weight is None else F.linear(features, weight)


def starting_points(num_features: int, count: int, seed: int) -> torch.Tensor:
    """The authors' ``np.random.choice(N, min(count, N), replace=False)`` after seeding."""
    state = np.random.RandomState(seed)
    return torch.from_numpy(state.choice(num_features, min(count, num_features), replace=False))


def coreset_size(num_features: int, ratio: float) -> int:
    """How many features a ``ratio`` keeps: the authors' ``int(N * ratio)`` (at least one,
    where theirs would keep an empty bank)."""
    if ratio >= 1.0:
        return num_features
    return max(1, int(num_features * ratio))


def _squared_norms(points: torch.Tensor) -> torch.Tensor:
    """Row-wise squared norms by the batched product the authors use (same rounding)."""
    # [N, d] -> [N, 1]
    return points.unsqueeze(1).bmm(points.unsqueeze(2)).reshape(-1, 1)


def greedy_coreset(
    projected: torch.Tensor, num_samples: int, anchors: torch.Tensor
) -> torch.Tensor:
    """Alg. 1: repeatedly take the feature farthest from the anchors' mean and the chosen set."""
    # [N, d], [A] -> [num_samples] indices
    n = projected.shape[0]
    norms = _squared_norms(projected)  # [N, 1]
    start = projected[anchors]  # [A, d]
    squared = -2 * projected.mm(start.T) + norms + _squared_norms(start).reshape(1, -1)
    nearest = squared.clamp(0, None).sqrt().mean(-1).reshape(-1, 1)  # [N, 1]
    chosen = torch.empty(num_samples, dtype=torch.long, device=projected.device)
    distance = torch.empty(n, 1, dtype=projected.dtype, device=projected.device)
    with _one_cpu_thread(projected.device):
        for step in range(num_samples):
            index = torch.argmax(nearest)
            chosen[step] = index
            centre = projected[index].unsqueeze(0)  # [1, d]
            torch.mm(projected, centre.T, out=distance)
            distance.mul_(-2).add_(norms).add_(norms[index]).clamp_(0, None).sqrt_()
            torch.minimum(nearest, distance, out=nearest)
    return chosen


def approximate_greedy_coreset(
    projected: torch.Tensor, ratio: float, seed: int, num_anchors: int = 10
) -> torch.Tensor:
    """Indices of the coreset of ``projected`` features; ratio 1.0 keeps every feature."""
    # [N, d] -> [int(N * ratio)] indices
    n = projected.shape[0]
    if ratio >= 1.0:
        return torch.arange(n, device=projected.device)
    anchors = starting_points(n, num_anchors, seed).to(projected.device)
    return greedy_coreset(projected, coreset_size(n, ratio), anchors)

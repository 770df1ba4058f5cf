"""Approximate greedy coreset (paper Sec. 3.2, Alg. 1; authors' ApproximateGreedyCoresetSampler).

Greedy k-center selection on features randomly projected to 128 dimensions (Johnson-
Lindenstrauss). As in the authors' code, the running distance starts as each feature's mean
distance to a few random anchors instead of an N x N matrix, and each step adds the feature
farthest from everything chosen so far. Only O(N) distances are ever held; work stays on the
features' device.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


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
    """Seeded [in_dim, out_dim] matrix, drawn like the authors' untrained ``nn.Linear``."""
    generator = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(in_dim)
    matrix = (torch.rand(in_dim, out_dim, generator=generator) * 2.0 - 1.0) * bound
    return matrix.to(device)


def coreset_size(num_features: int, ratio: float) -> int:
    """How many features a ``ratio`` keeps (the authors' ``int(N * ratio)``, at least one)."""
    if ratio >= 1.0:
        return num_features
    return max(1, int(num_features * ratio))


def greedy_coreset(
    projected: torch.Tensor, num_samples: int, anchors: torch.Tensor, chunk: int = 65536
) -> torch.Tensor:
    """Alg. 1: repeatedly take the feature farthest from the anchors' mean and the chosen set."""
    # [N, d], [A] -> [num_samples] indices
    n = projected.shape[0]
    columns = projected.T.contiguous()  # [d, N]: a row-vector product over it is the fast layout
    norms = (columns * columns).sum(0)  # [N]
    anchor_points = projected[anchors]  # [A, d]
    anchor_norms = (anchor_points * anchor_points).sum(1)  # [A]
    nearest = torch.empty(n, dtype=projected.dtype, device=projected.device)
    for start in range(0, n, chunk):
        block = projected[start : start + chunk]  # [c, d]
        squared = (
            norms[start : start + chunk, None] + anchor_norms[None] - 2 * block @ anchor_points.T
        )
        nearest[start : start + chunk] = squared.clamp_min(0).sqrt().mean(1)
    nearest.square_()  # squared distances from here on: same argmax, no square roots
    chosen = torch.empty(num_samples, dtype=torch.long, device=projected.device)
    distance = torch.empty_like(nearest)
    with _one_cpu_thread(projected.device):
        for step in range(num_samples):
            index = torch.argmax(nearest).view(1)
            chosen[step] = index[0]
            centre = columns.index_select(1, index)  # [d, 1]
            torch.matmul(centre.T, columns, out=distance.view(1, n))
            distance.mul_(-2.0).add_(norms).add_(norms.index_select(0, index)).clamp_min_(0.0)
            torch.minimum(nearest, distance, out=nearest)
    return chosen


def approximate_greedy_coreset(
    projected: torch.Tensor, ratio: float, seed: int, num_anchors: int = 10, chunk: int = 65536
) -> torch.Tensor:
    """Indices of the coreset of ``projected`` features; ratio 1.0 keeps every feature."""
    # [N, d] -> [M] indices
    n = projected.shape[0]
    if ratio >= 1.0:
        return torch.arange(n, device=projected.device)
    generator = torch.Generator().manual_seed(seed)
    anchors = torch.randperm(n, generator=generator)[: min(num_anchors, n)]
    return greedy_coreset(projected, coreset_size(n, ratio), anchors.to(projected.device), chunk)

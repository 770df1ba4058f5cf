"""Exact nearest-neighbour search over the memory bank with faiss (``IndexFlatL2``).

A GPU index is used when the run's device is CUDA and faiss was built with GPU support;
queries go in chunks so the distance output stays bounded whatever the batch size.
"""

from __future__ import annotations

import faiss
import numpy as np
import torch


def _use_gpu(device: str) -> bool:
    return (
        device.startswith("cuda")
        and hasattr(faiss, "StandardGpuResources")
        and faiss.get_num_gpus() > 0
    )


class NearestNeighbours:
    """k-NN over a fixed bank; returns Euclidean (not squared) distances as the paper's eq. 6."""

    def __init__(self, bank: torch.Tensor, device: str = "cpu") -> None:
        # bank: [M, D]
        self.size, self.dim = bank.shape
        self.gpu = _use_gpu(device)
        self.device = device
        data = bank.detach().float().cpu().contiguous().numpy()
        index = faiss.IndexFlatL2(self.dim)
        if self.gpu:
            self._resources = faiss.StandardGpuResources()
            gpu_id = torch.device(device).index or 0
            index = faiss.index_cpu_to_gpu(self._resources, gpu_id, index)
        index.add(data)
        self.index = index

    def search(
        self, queries: torch.Tensor, k: int, chunk: int = 16384
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Distances and bank indices of the k nearest bank features, on the queries' device."""
        # [Q, D] -> [Q, k], [Q, k]
        k = min(k, self.size)
        data = queries.detach().float().cpu().contiguous().numpy()
        distances = np.empty((len(data), k), dtype=np.float32)
        indices = np.empty((len(data), k), dtype=np.int64)
        for start in range(0, len(data), chunk):
            squared, found = self.index.search(data[start : start + chunk], k)
            distances[start : start + chunk] = squared
            indices[start : start + chunk] = found
        np.sqrt(np.maximum(distances, 0.0, out=distances), out=distances)
        device = queries.device
        return torch.from_numpy(distances).to(device), torch.from_numpy(indices).to(device)

"""Exact k-nearest-neighbour search: one function for every method's memory bank.

PatchCore scores patches by their distance to a bank of normal patch features (faiss
``IndexFlatL2``, as its authors search); WinCLIP+ and AF-CLIP take a query's cosine distance
to the nearest normal reference. ``nearest_neighbours`` does both: on a bank tensor it runs
on the tensors' device in chunks of queries and bank rows (memory bounded by
``chunk x bank_chunk`` distances, never by the bank size), merging running top-k lists; on
a ``FlatL2Index`` it asks faiss for the squared L2 distances the PatchCore authors' code
scores with.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from adcore.infra.errors import PluginError

Metric = Literal["l2", "squared_l2", "cosine"]


class FlatL2Index:
    """A fixed bank in a faiss ``IndexFlatL2`` (exhaustive, exact), on the GPU when the run's
    device is CUDA and faiss was built with GPU support.

    Bank and queries are shifted by the bank's mean before faiss sees them. Distances do not
    change, but faiss computes ||q||^2 + ||b||^2 - 2 q.b in float32, and CNN features share a
    large common offset (norms^2 some 500 times the nearest squared distance on a
    wide_resnet50_2), so unshifted the result keeps only about four significant digits and
    moves with the query batch size; shifted it agrees with a float64 computation to ~1e-6.
    """

    def __init__(self, bank: torch.Tensor, device: str = "cpu") -> None:
        # bank: [M, D]
        try:
            import faiss
        except ImportError:
            raise PluginError(
                "faiss is not installed, and this method searches its memory bank with it.",
                "Install it: pip install faiss-cpu (or faiss-gpu for CUDA).",
            ) from None
        self.size, self.dim = bank.shape
        index: Any = faiss.IndexFlatL2(self.dim)
        self.gpu = (
            device.startswith("cuda")
            and hasattr(faiss, "StandardGpuResources")
            and faiss.get_num_gpus() > 0
        )
        if self.gpu:
            self._resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._resources, torch.device(device).index or 0, index)
        rows = bank.detach().float().cpu()
        self.mean = rows.double().mean(0).float()  # [D]
        index.add((rows - self.mean).contiguous().numpy())
        self.index = index

    def search(
        self, queries: torch.Tensor, k: int, chunk: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared L2 distances and indices of the k nearest rows, on the CPU."""
        # [Q, D] -> [Q, k], [Q, k]
        data = (queries.detach().float().cpu() - self.mean).contiguous().numpy()
        distances = torch.empty(len(data), k, dtype=torch.float32)
        indices = torch.empty(len(data), k, dtype=torch.int64)
        for start in range(0, len(data), chunk):
            squared, found = self.index.search(data[start : start + chunk], k)
            distances[start : start + chunk] = torch.from_numpy(squared)
            indices[start : start + chunk] = torch.from_numpy(found)
        return distances, indices


def _merge(
    best: tuple[torch.Tensor, torch.Tensor] | None,
    new: tuple[torch.Tensor, torch.Tensor],
    k: int,
    largest: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep the k best of two running lists ([..., k] values and indices)."""
    if best is None:
        return new
    values = torch.cat([best[0], new[0]], dim=-1)
    indices = torch.cat([best[1], new[1]], dim=-1)
    values, order = values.topk(min(k, values.shape[-1]), dim=-1, largest=largest)
    return values, indices.gather(-1, order)


def nearest_neighbours(
    queries: torch.Tensor,
    bank: torch.Tensor | FlatL2Index,
    k: int = 1,
    metric: Metric = "l2",
    chunk: int = 16384,
    bank_chunk: int = 8192,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distances and bank indices of the k nearest bank rows of every query, nearest first.

    ``metric``: ``l2`` Euclidean, ``squared_l2`` its square, ``cosine`` 1 - cos (both sides
    normalised here). ``bank`` is [M, D] shared by all queries, [B, M, D] with queries
    [B, Q, D] (one bank per batch element), or a ``FlatL2Index`` (l2 metrics). Results come
    back on the queries' device, in float32; k larger than the bank is cut to its size.
    """
    # [..., Q, D], [..., M, D] -> [..., Q, k], [..., Q, k]
    if metric not in ("l2", "squared_l2", "cosine"):
        raise ValueError(f"unknown metric {metric!r}")
    if isinstance(bank, FlatL2Index):
        if metric == "cosine":
            raise ValueError("a FlatL2Index searches by L2 distance, not cosine")
        k = min(k, bank.size)
        flat = queries.reshape(-1, queries.shape[-1])
        distances, indices = bank.search(flat, k, chunk)
        if metric == "l2":
            distances = distances.clamp_min_(0).sqrt_()
        shape = (*queries.shape[:-1], k)
        return distances.reshape(shape).to(queries.device), indices.reshape(shape).to(
            queries.device
        )
    query = queries.float()
    rows = bank.to(query.device).float()
    if metric == "cosine":
        query, rows = F.normalize(query, dim=-1), F.normalize(rows, dim=-1)
    k = min(k, rows.shape[-2])
    largest = metric == "cosine"  # similarity is searched for cosine, distance otherwise
    outputs = []
    for start in range(0, query.shape[-2], chunk):
        part = query[..., start : start + chunk, :]  # [..., q, D]
        part_norms = (part * part).sum(-1, keepdim=True) if not largest else None
        best = None
        for offset in range(0, rows.shape[-2], bank_chunk):
            block = rows[..., offset : offset + bank_chunk, :]  # [..., m, D]
            values = part @ block.transpose(-1, -2)  # [..., q, m]
            if not largest:
                norms = (block * block).sum(-1)[..., None, :]
                values = (part_norms + norms - 2 * values).clamp_min_(0)
            found = values.topk(min(k, values.shape[-1]), dim=-1, largest=largest)
            best = _merge(best, (found.values, found.indices + offset), k, largest)
        outputs.append(best)
    distances = torch.cat([d for d, _ in outputs], dim=-2)
    indices = torch.cat([i for _, i in outputs], dim=-2)
    if metric == "cosine":
        distances = 1.0 - distances
    elif metric == "l2":
        distances = distances.sqrt()
    return distances, indices

"""adcore.toolkit.neighbors: exact k-NN by chunks and through faiss, against float64 brute force."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from adcore.toolkit.neighbors import FlatL2Index, nearest_neighbours
from tolerances import sum_bound


def search_bound(queries, bank, metric: str, nearest: float) -> float:
    """How far a float32 distance may lie from the float64 one. Squared L2: a ``D + 2``-term
    sum of magnitude at most ``(|q| + |b|)^2``; L2 halves that relative error at the
    smallest distance ``nearest``; cosine: a dot product of unit vectors after two
    ``D``-term norms."""
    dim = queries.shape[-1]
    if metric == "cosine":
        return sum_bound(torch.float32, 2 * dim, 1.0)
    reach = float(queries.norm(dim=-1).max() + bank.norm(dim=-1).max())
    squared = sum_bound(torch.float32, dim + 2, reach**2)
    return squared if metric == "squared_l2" else squared / (2 * nearest)


def brute_force(queries, bank, k, metric):
    q, b = queries.double(), bank.double()
    if metric == "cosine":
        distances = 1 - F.normalize(q, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)
    else:
        distances = torch.cdist(q, b)
        if metric == "squared_l2":
            distances = distances.square()
    return distances.topk(k, dim=-1, largest=False)


@pytest.mark.parametrize("metric", ["l2", "squared_l2", "cosine"])
def test_chunked_search_equals_brute_force(metric):
    generator = torch.Generator().manual_seed(0)
    bank = torch.randn(301, 24, generator=generator)
    queries = torch.randn(2, 77, 24, generator=generator)  # leading batch axis kept
    distances, indices = nearest_neighbours(queries, bank, 4, metric, chunk=20, bank_chunk=50)
    expected = brute_force(queries, bank, 4, metric)
    assert distances.shape == indices.shape == (2, 77, 4)
    assert torch.equal(indices, expected.indices)
    tolerance = search_bound(queries, bank, metric, float(expected.values.min()))
    assert torch.allclose(distances.double(), expected.values, rtol=0, atol=tolerance)


def test_one_bank_per_batch_element_and_k_cut_to_bank_size():
    generator = torch.Generator().manual_seed(1)
    banks = torch.randn(3, 9, 8, generator=generator)
    queries = torch.randn(3, 40, 8, generator=generator)
    distances, indices = nearest_neighbours(queries, banks, 20, "cosine", bank_chunk=4)
    assert distances.shape == (3, 40, 9)
    for i in range(3):
        expected = brute_force(queries[i], banks[i], 9, "cosine")
        assert torch.equal(indices[i], expected.indices)


def test_faiss_index_equals_torch_search_and_survives_a_common_offset():
    generator = torch.Generator().manual_seed(2)
    # CNN-like features: a large shared offset, small differences (norm^2 / d^2 ~ 1e4)
    offset = 50 * torch.rand(256, generator=generator)
    bank = offset + torch.randn(500, 256, generator=generator) * 0.3
    queries = offset + torch.randn(64, 256, generator=generator) * 0.3
    index = FlatL2Index(bank)
    distances, indices = nearest_neighbours(queries, index, 3, "squared_l2", chunk=10)
    expected = brute_force(queries, bank, 3, "squared_l2")
    assert torch.equal(indices, expected.indices)
    # searched around the bank's mean: the bound holds for the centred vectors, whose reach
    # is about 1/50 of the raw ones (an uncentred search would need a 2,500x looser one)
    mean = bank.double().mean(0)
    tolerance = search_bound(queries - mean, bank - mean, "squared_l2", 0.0)
    assert torch.allclose(distances.double(), expected.values, rtol=0, atol=tolerance)
    with pytest.raises(ValueError, match="cosine"):
        nearest_neighbours(queries, index, 1, "cosine")

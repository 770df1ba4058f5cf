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

Unfolding and pooling are one linear map per position, and adaptive pooling never mixes
entries across ``gcd(C, dim)`` equal groups of channels, so :func:`local_aggregation` runs it
as a grouped convolution with the bins' averaging weights: the same summands in another
order (1.6e-7 relative on wide_resnet50_2), without materialising the unfolded
``[B, C*p*p, H*W]`` tensor, 5-25x faster than unfold plus ``adaptive_avg_pool`` on
wide_resnet50_2's stages (``benchmarks/bench_patch_features.py`` times the whole stage).
Where a bin's group is wide (few common factors of ``C`` and ``dim``) the convolution would
do more work than it saves, and the unfold path runs.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from adcore.api import ConfigError, FlatL2Index, anomaly_map, nearest_neighbours

# the grouped convolution runs while each output reads at most this many channels
MAX_CHANNELS_PER_GROUP = 8


@functools.cache
def pooling_weight(channels: int, patch_size: int, dim: int) -> tuple[np.ndarray, int]:
    """The grouped-convolution form of "unfold ``p x p``, adaptive average pool to ``dim``".

    Adaptive pooling of ``L = C*p*p`` entries (channel-major, as ``F.unfold`` lays them
    out) to ``dim`` bins averages entries ``[floor(i L / dim), ceil((i+1) L / dim))`` into
    bin ``i``. With ``g = gcd(C, dim)``, bins ``[j dim/g, (j+1) dim/g)`` only read channels
    ``[j C/g, (j+1) C/g)``, so the map is a convolution with ``groups=g`` whose weight holds
    ``1 / len(bin)`` on each bin's entries. Returns (weight [dim, C/g, p, p] float64, g), a
    read-only numpy array: a cached torch tensor made while ``torch.export`` traces would
    be a fake one, and every later call would get it.
    """
    groups = math.gcd(channels, dim)
    entries = channels * patch_size * patch_size
    per_group = entries // groups
    bins = np.arange(dim)
    start = bins * entries // dim
    end = ((bins + 1) * entries + dim - 1) // dim
    first = (bins // (dim // groups)) * per_group  # the bin's group's first entry
    position = np.arange(per_group)[None, :] + first[:, None]  # [dim, per_group]
    inside = (position >= start[:, None]) & (position < end[:, None])
    weight = inside / (end - start).astype(np.float64)[:, None]
    weight = weight.reshape(dim, channels // groups, patch_size, patch_size)
    weight.setflags(write=False)
    return weight, groups  # float64; cast to the features at use


def local_aggregation(
    features: torch.Tensor, patch_size: int, dim: int, grouped: bool | None = None
) -> torch.Tensor:
    """Paper eq. 2 with the authors' f_agg: unfold p x p (zero padding ``(p-1)//2``, stride
    1), adaptive average pool the flattened ``C*p*p`` neighbourhood to ``dim``.

    ``grouped``: the grouped convolution (True), unfold then pool (False), or whichever is
    cheaper for the shapes (None).
    """
    # [B, C, H, W] -> [B, dim, H', W'] (H' = H for odd p)
    padding = (patch_size - 1) // 2
    channels = features.shape[1]
    if grouped is None:
        grouped = channels // math.gcd(channels, dim) <= MAX_CHANNELS_PER_GROUP
    if grouped:
        table, groups = pooling_weight(channels, patch_size, dim)
        weight = torch.tensor(table, device=features.device, dtype=features.dtype)
        return F.conv2d(features, weight, padding=padding, groups=groups)
    b, _, h, w = features.shape
    unfolded = F.unfold(features, kernel_size=patch_size, padding=padding)
    # [B, C*p*p, H'*W']: pool along the feature axis only (output width = input width)
    pooled = F.adaptive_avg_pool2d(unfolded.unsqueeze(1), (dim, unfolded.shape[-1])).squeeze(1)
    side = h + 2 * padding - patch_size + 1, w + 2 * padding - patch_size + 1
    return pooled.reshape(b, dim, *side)


class LocallyAwarePatchFeatures(nn.Module):
    """Backbone stages -> one ``target_dim`` feature per patch of the first stage's grid.

    With ``channels_last`` (the default) the backbone runs in channels-last memory format,
    weights and input: the same values, faster on a CPU, whose oneDNN convolutions work in
    NHWC (``benchmarks/bench_patch_features.py``).
    """

    def __init__(
        self,
        backbone: nn.Module,
        patch_size: int,
        pretrain_dim: int,
        target_dim: int,
        backbone_autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
            contextlib.nullcontext
        ),
        channels_last: bool = True,
    ) -> None:
        super().__init__()
        self.layout = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone = backbone.to(memory_format=self.layout)
        # reduced precision for the CNN only (``Runtime.backbone_autocast``)
        self.backbone_autocast = backbone_autocast
        self.patch_size = patch_size
        self.pretrain_dim = pretrain_dim
        self.target_dim = target_dim

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised images -> patch features and the patch grid."""
        # [B, 3, H, W] -> [B, h*w, D], (h, w)
        with self.backbone_autocast():
            raw = self.backbone(images.contiguous(memory_format=self.layout))
        maps = [m.float() for m in raw]
        layers = []
        for feature_map in maps:
            pooled = local_aggregation(feature_map, self.patch_size, self.pretrain_dim)
            if layers and pooled.shape[-2:] != layers[0].shape[-2:]:
                size = tuple(layers[0].shape[-2:])
                pooled = F.interpolate(pooled, size=size, mode="bilinear", align_corners=False)
            layers.append(pooled)  # [B, pretrain_dim, h, w]
        stacked = torch.cat(layers, dim=1)  # [B, L*pretrain_dim, h, w]
        merged = local_aggregation(stacked, 1, self.target_dim)  # the authors' Aggregator
        grid = (int(merged.shape[-2]), int(merged.shape[-1]))
        return merged.flatten(2).transpose(1, 2).contiguous(), grid


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


class MemoryBank:
    """The memory bank M (Sec. 3.2) and its nearest-neighbour search (Sec. 3.3, eq. 6-7).

    ``features`` [M, D] stay on the CPU (the canonical copy, saved by ``fitted_state``); the
    flat L2 index lives on ``device``.
    """

    def __init__(self, features: torch.Tensor, device: str, num_neighbors: int, what: str):
        """Refuses fewer rows than ``num_neighbors``: faiss would pad the missing neighbours
        with index -1 and infinite distances."""
        if num_neighbors > len(features):
            raise ConfigError(
                f"model.num_neighbors is {num_neighbors}, but {what} holds "
                f"{len(features)} patch features.",
                f"Set model.num_neighbors to at most {len(features)} (the paper uses 1), or "
                "give PatchCore more training images or a larger model.coreset_ratio.",
            )
        self.features = features  # [M, D]
        self.index = FlatL2Index(features, device)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def nbytes(self) -> int:
        return self.features.numel() * self.features.element_size()

    def score(
        self,
        features: torch.Tensor,
        metric: str,
        num_neighbors: int,
        reweight_neighbors: int | None,
        search_chunk: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Patch score = mean distance to the ``num_neighbors`` nearest bank rows (eq. 6);
        image score = the max patch score, or eq. 7's re-weighting of it with
        ``reweight_neighbors`` (b).

        ``metric``: ``squared_l2`` (the released code's faiss distances) or ``l2``.
        """
        # [B, n, D] -> scores [B], patch scores [B, n]
        b, n, dim = features.shape
        flat = features.reshape(-1, dim)
        distances, indices = nearest_neighbours(
            flat, self.index, num_neighbors, metric, search_chunk
        )
        patch_scores = distances.mean(1).reshape(b, n)  # [B, n]
        scores, worst = patch_scores.max(1)
        if reweight_neighbors is not None:
            rows = torch.arange(b, device=flat.device) * n + worst
            test_feature = flat[rows]  # [B, D]: m_test,*
            nearest = self.features[indices[rows, 0].cpu()].to(flat.device)  # [B, D]: m*
            _, support = nearest_neighbours(nearest, self.index, reweight_neighbors, "squared_l2")
            members = self.features[support.cpu()].to(flat.device)  # [B, b, D]: N_b(m*)
            neighbourhood = torch.linalg.vector_norm(members - test_feature[:, None], dim=2)
            nearest_distance = torch.linalg.vector_norm(test_feature - nearest, dim=1)
            scores = reweighted_score(scores, nearest_distance, neighbourhood)
        return scores, patch_scores


class PatchCoreGraph(nn.Module):
    """The fitted PatchCore as one module for export: features, the exact search of the
    memory bank (held as a buffer), eq. 6/eq. 7 and the smoothed map.

    The search is :class:`MemoryBank`'s in one product: squared L2 ``||q||^2 + ||m||^2 -
    2 q.m`` on rows shifted by the bank's mean (as ``FlatL2Index`` shifts them for faiss),
    so scores equal ``predict``'s to float32 rounding. Memory grows as B x h x w x M
    distances: the graph searches all of a batch's patches at once.
    """

    def __init__(
        self,
        features: LocallyAwarePatchFeatures,
        bank: torch.Tensor,
        metric: str,
        num_neighbors: int,
        reweight_neighbors: int | None,
        sigma: float,
    ) -> None:
        super().__init__()
        self.features = features
        rows = bank.detach().float()
        center = rows.double().mean(0).float()  # [D]
        shifted = rows - center
        self.register_buffer("center", center)
        self.register_buffer("bank", shifted)  # [M, D]
        self.register_buffer("bank_norms", (shifted * shifted).sum(1))  # [M]
        self.squared = metric == "squared_l2"
        self.num_neighbors = min(num_neighbors, len(rows))
        self.reweight_neighbors = (
            None if reweight_neighbors is None else min(reweight_neighbors, len(rows))
        )
        self.sigma = sigma

    def _search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Shifted queries [Q, D] -> squared distances and indices of the k nearest rows."""
        products = queries @ self.bank.T  # [Q, M]
        squared = (queries * queries).sum(1, keepdim=True) + self.bank_norms - 2.0 * products
        values, indices = squared.clamp_min(0.0).topk(k, dim=1, largest=False)
        return values, indices

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float32 [B, 3, H, W] -> scores [B], maps [B, H, W]."""
        features, grid = self.features(images)  # [B, n, D]
        b, n, dim = features.shape
        flat = features.reshape(-1, dim) - self.center
        squared, indices = self._search(flat, self.num_neighbors)
        distances = squared if self.squared else squared.sqrt()
        patch_scores = distances.mean(1).reshape(b, n)  # [B, n]
        scores, worst = patch_scores.max(1)
        if self.reweight_neighbors is not None:
            rows = torch.arange(b, device=flat.device) * n + worst
            test_feature = flat[rows]  # [B, D]: m_test,*
            nearest = self.bank[indices[rows, 0]]  # [B, D]: m*
            _, support = self._search(nearest, self.reweight_neighbors)
            members = self.bank[support]  # [B, b, D]: N_b(m*)
            neighbourhood = torch.linalg.vector_norm(members - test_feature[:, None], dim=2)
            nearest_distance = torch.linalg.vector_norm(test_feature - nearest, dim=1)
            scores = reweighted_score(scores, nearest_distance, neighbourhood)
        size = (images.shape[-2], images.shape[-1])
        return scores, anomaly_map(patch_scores.reshape(b, *grid), size, self.sigma)


def gather_rows(chunks: list[torch.Tensor]) -> torch.Tensor:
    """The chunks as one tensor, freeing each as it is copied (peak: the result + 1 chunk)."""
    # list of [n_i, D] -> [N, D]
    total = sum(len(chunk) for chunk in chunks)
    out = torch.empty(total, chunks[0].shape[1], dtype=chunks[0].dtype)
    offset = 0
    while chunks:
        chunk = chunks.pop(0)
        out[offset : offset + len(chunk)] = chunk
        offset += len(chunk)
    return out


class DiskRows:
    """Feature rows appended to a temporary file, read back as one memory-mapped tensor.

    Resident memory holds one batch at a time while rows are added; :meth:`tensor` maps the
    file (pages come from the page cache, which the kernel may reclaim), so a fit over a
    large training set does not hold every feature in anonymous memory. The file is removed
    by :meth:`close` (or when the object is collected).
    """

    def __init__(self) -> None:
        import tempfile

        # owned by this object, closed (and so removed) by close()
        self.file = tempfile.TemporaryFile(prefix="ad-patchcore-features-")  # noqa: SIM115
        self.rows, self.dim = 0, 0

    def append(self, rows: torch.Tensor) -> None:
        # [n, D] -> the file
        rows = rows.detach().to("cpu", torch.float32).contiguous()
        self.dim = rows.shape[1]
        self.file.write(rows.numpy().tobytes())
        self.rows += rows.shape[0]

    def tensor(self) -> torch.Tensor:
        """The rows written so far as a read-only mapped [N, D] float32 tensor."""
        import warnings

        import numpy as np

        self.file.flush()
        mapped = np.memmap(self.file, dtype=np.float32, mode="r", shape=(self.rows, self.dim))
        with warnings.catch_warnings():  # read-only on purpose: nothing writes to it
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(mapped)

    def close(self) -> None:
        self.file.close()

"""MuSc (Li, Huang, Xue, Zhou, ICLR 2024): zero-shot scores from the test set itself.

Data path (Sec. 3): patch tokens of several ViT blocks -> LNAMD at each aggregation degree r
(Sec. 3.2) -> MSM: every image's patches scored against every other image (Sec. 3.3) ->
the maps averaged over blocks and degrees, upsampled -> image score = the map's maximum,
re-scored by RsCIN over the class tokens (Sec. 3.4).

What is exact and what is a shortcut for the same arithmetic (github xrli-U/MuSc):
- LNAMD: their ``Unfold`` (r x r, zero padding) followed by ``adaptive_avg_pool1d`` from
  C*r*r to C averages each channel's r x r window, zeros included; ``avg_pool2d`` with
  ``count_include_pad`` computes that without the r*r-times larger unfolded tensor.
- MSM: their ``torch.cdist`` of one image's patches against all other images' patches at
  once, [L, (N-1)*L], is done here in blocks of images on both sides, keeping only each
  block's per-image minimum: the same distances (unit vectors: |a-b|^2 = 2 - 2 a.b, as
  ``cdist``'s matrix-product path computes them), memory bounded by the block, not the set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def lnamd(tokens: torch.Tensor, grid: int, degree: int) -> torch.Tensor:
    """Local neighbourhood aggregation (Sec. 3.2, their ``LNAMD._embed``) for one block.

    Tokens [B, h*w, C] (patches only) -> a LayerNorm over each image's whole [C, h, w] map
    (a fresh ``nn.LayerNorm([C, h, w])``: weight 1, bias 0), the mean of every r x r window
    (zero padding counted), unit length per patch -> [B, h*w, C].
    """
    batch, count, channels = tokens.shape
    x = tokens.transpose(1, 2).reshape(batch, channels, grid, count // grid)  # [B, C, h, w]
    x = F.layer_norm(x, x.shape[1:])
    if degree > 1:
        x = F.avg_pool2d(x, degree, stride=1, padding=degree // 2, count_include_pad=True)
    z = x.flatten(2).transpose(1, 2)  # [B, h*w, C]
    return z / z.norm(dim=-1, keepdim=True)


def interval_bounds(others: int, low: float, high: float) -> tuple[int, int]:
    """The ranks [k_min, k_max) MSM averages among an image's ``others`` scores per patch.

    As their ``compute_scores_fast``: an end below 1 is a fraction (``int(others * x)``),
    otherwise a count, swapped when reversed. Where that leaves no score (fewer than four
    other images at 30 %, which gives them NaN) the lowest score is kept: k_max >= k_min + 1.
    """
    k_max = int(others * high) if high < 1 else int(high)
    k_min = int(others * low) if low < 1 else int(low)
    if k_max < k_min:
        k_max, k_min = k_min, k_max
    k_max = min(max(k_max, k_min + 1), others)
    return min(k_min, k_max - 1), k_max


def mutual_scores(z: torch.Tensor, low: float, high: float, chunk: int) -> torch.Tensor:
    """Mutual scoring (Sec. 3.3, their ``MSM``) of one block at one degree.

    Z [N, L, C] unit vectors -> [N, L]: for each patch of image i, its distance to the
    nearest patch of each other image j != i, and the mean of those N-1 distances ranked
    within :func:`interval_bounds` (the lowest 30 % by default). Images go through in blocks
    of ``chunk`` on both sides: memory is chunk^2 * L^2 similarities plus chunk * L * N
    distances, never the N * L * N * L of all pairs.
    """
    count, patches, channels = z.shape
    if count < 2:
        return z.new_zeros(count, patches)  # no other image to score against
    k_min, k_max = interval_bounds(count - 1, low, high)
    flat = z.reshape(-1, channels)
    rows = []
    for start in range(0, count, chunk):
        query = flat[start * patches : (start + chunk) * patches]  # [q*L, C]
        q = len(query) // patches
        similarity = torch.cat(
            [
                (query @ flat[ref * patches : (ref + chunk) * patches].T)
                .view(q, patches, -1, patches)
                .amax(dim=-1)  # [q, L, m]: nearest patch of each reference image
                for ref in range(0, count, chunk)
            ],
            dim=-1,
        )  # [q, L, N]
        distance = (2.0 - 2.0 * similarity).clamp_min(0.0).sqrt()
        own = torch.arange(start, start + q, device=z.device)
        distance[torch.arange(q, device=z.device), :, own] = float("inf")  # j != i
        lowest = distance.topk(k_max, dim=-1, largest=False).values  # ascending
        rows.append(lowest[..., k_min:k_max].mean(dim=-1))
    return torch.cat(rows)


def set_patch_scores(
    tokens: torch.Tensor,
    grid: int,
    degrees: list[int],
    low: float = 0.0,
    high: float = 0.3,
    chunk: int = 4,
) -> torch.Tensor:
    """Tokens of every block [K, N, L, C] -> patch scores [N, L]: MSM of LNAMD features,
    averaged over the K blocks, then over the degrees (their ``make_category_data``)."""
    per_degree = []
    for degree in degrees:
        layers = []
        for block in tokens:  # [N, L, C]: one block's features at a time, built in chunks
            z = torch.empty_like(block)
            for start in range(0, len(block), chunk):
                z[start : start + chunk] = lnamd(block[start : start + chunk], grid, degree)
            layers.append(mutual_scores(z, low, high, chunk))
        per_degree.append(torch.stack(layers).mean(dim=0))
    return torch.stack(per_degree).mean(dim=0)


def upsampled_maps(patch_scores: torch.Tensor, grid: int, size: int) -> torch.Tensor:
    """[N, h*w] -> [N, S, S]: bilinear with ``align_corners=True``, as theirs (no smoothing)."""
    maps = patch_scores.view(len(patch_scores), 1, grid, -1)
    return F.interpolate(maps, size=(size, size), mode="bilinear", align_corners=True)[:, 0]


def rscin(scores: torch.Tensor, embeddings: torch.Tensor, windows: tuple[int, ...]) -> torch.Tensor:
    """Re-scoring with a constrained image-level neighbourhood (Sec. 3.4, their ``RsCIN``).

    Scores [N] are min-max normalised over the set (all equal: 0); W = E E^T of the class
    embeddings [N, D]; for each window k, every row keeps its k largest entries (the image
    itself among them), is divided by their sum and averages the normalised scores with
    those weights; the windows' results are averaged -> [N]. ``windows`` empty: unchanged.
    Window sizes above N are taken as N. In float64 (N x N is small).
    """
    if not windows:
        return scores
    s = scores.double()
    span = s.max() - s.min()
    s = (s - s.min()) / span if span > 0 else torch.zeros_like(s)
    w = embeddings.double() @ embeddings.double().T  # [N, N]
    rescored = []
    for k in windows:
        keep = w.topk(min(k, len(w)), dim=1).indices
        masked = torch.zeros_like(w).scatter(1, keep, w.gather(1, keep))
        rescored.append((masked / masked.sum(dim=1, keepdim=True)) @ s)
    return torch.stack(rescored).mean(dim=0).to(scores.dtype)

"""AUPRO as in the official MVTec AD evaluation (Bergmann et al., IJCV 2021, Sec. 4.2).

Each ground-truth region is an 8-connected component of a mask. At a threshold ``t`` the PRO
is the mean over all regions of the category of the fraction of the region scoring >= t,
and the FPR is the fraction of the category's normal pixels scoring >= t. The curve runs
through every distinct score; its trapezoidal area up to ``fpr_limit`` (the point at the
limit linearly interpolated) is divided by ``fpr_limit``, so a perfect map scores 1.

Computed without the curve: a trapezoid segment ends at each distinct normal score ``s``,
spans (#normal == s) / n0 along the FPR axis and has mean height (PRO(> s) + PRO(>= s)) / 2,
so the area up to the limit is a weighted Mann-Whitney sum: each anomalous pixel, weighted
1 / (region size x regions), counts the normal pixels above the cut below it (equal ones
half). Only the top ``fpr_limit`` share of normal scores is sorted (after a linear-time
partition); the segment that crosses the limit is interpolated separately.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from adcore.infra.errors import ConfigError
from adcore.metrics.inputs import (
    check_finite_sorted,
    image_pairs,
    iter_chunks,
    nan_error,
    score_dtype,
)


def region_pixels(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """-> normal scores [n0], anomalous scores [n1], 1/region size [n1], number of regions."""
    from scipy import ndimage

    pairs = image_pairs(maps, masks)
    dtype = score_dtype([anomaly_map for anomaly_map, _ in pairs])
    n_pos = sum(int(np.count_nonzero(mask)) for _, mask in pairs)
    n_all = sum(mask.size for _, mask in pairs)
    negatives = np.empty(n_all - n_pos, dtype)
    positives = np.empty(n_pos, dtype)
    inverse_size = np.empty(n_pos, np.float64)
    eight_connected = np.ones((3, 3), dtype=np.int8)
    at_neg = at_pos = n_regions = 0
    for anomaly_map, mask in pairs:
        regions, count = ndimage.label(mask, structure=eight_connected)  # [H, W] int32
        inside = regions[mask]  # [m] region ids 1..count, row-major like anomaly_map[mask]
        sizes = np.bincount(inside, minlength=count + 1)
        size_inverse = np.zeros(count + 1, np.float64)
        size_inverse[1:] = 1.0 / np.maximum(sizes[1:], 1)
        end = at_pos + inside.size
        positives[at_pos:end] = anomaly_map[mask]
        inverse_size[at_pos:end] = size_inverse[inside]
        negatives[at_neg : at_neg + mask.size - inside.size] = anomaly_map[~mask]
        at_pos = end
        at_neg += mask.size - inside.size
        n_regions += count
    return negatives, positives, inverse_size, n_regions


def aupro(maps: Any, masks: Any, fpr_limit: float = 0.3) -> float:
    """Normalised area under the PRO curve up to ``fpr_limit``; NaN without regions or normals.

    maps [N,H,W] float (or a list of [H,W]), masks [N,H,W] (nonzero = defect).
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ConfigError(
            f"fpr_limit must lie in (0, 1], got {fpr_limit}.",
            "Use the MVTec AD value 0.3 unless a paper states another.",
        )
    negatives, positives, weights, n_regions = region_pixels(maps, masks)
    n_neg = negatives.size
    if n_regions == 0 or n_neg == 0:
        return float("nan")
    if positives.dtype.kind == "f" and np.isnan(positives).any():
        raise nan_error()

    # The cut: u = the (k+1)-th largest normal score, k = floor(limit in pixels). Normal
    # scores > u lie fully before the limit; the segment of scores == u crosses it.
    limit = fpr_limit * n_neg
    k = min(math.floor(limit), n_neg - 1)
    first_top = n_neg - 1 - k
    negatives.partition(first_top)
    top = negatives[first_top:]  # [k+1] every normal score >= u (and some == u)
    top.sort()
    check_finite_sorted(top)
    cut = top[0]
    below = negatives[:first_top]
    equal_below = sum(int(np.count_nonzero(below[part] == cut)) for part in iter_chunks(below.size))
    above_cut = int(top.size - np.searchsorted(top, cut, side="right"))  # normals > u
    at_cut = int(np.searchsorted(top, cut, side="right")) + equal_below  # normals == u
    below_in_top = top.size - above_cut  # entries of ``top`` that are <= u

    over = positives > cut
    weight_over = float(weights[over].sum())
    weight_at = float(weights[positives == cut].sum())
    pos_over = positives[over]
    w_over = weights[over]
    del over
    order = np.argsort(pos_over)
    pos_over = pos_over[order]
    w_over = w_over[order]
    del order

    # Full segments: sum_p w_p (#{u < s < p} + #{s == p} / 2), in units of normal pixels.
    area = 0.0
    for part in iter_chunks(pos_over.size):
        left = np.searchsorted(top, pos_over[part], side="left")
        right = np.searchsorted(top, pos_over[part], side="right")
        area += float(np.dot(w_over[part], 0.5 * (left + right) - below_in_top))

    # The segment crossing the limit, from (above_cut, PRO(> u)) to (above_cut + at_cut, PRO(>= u)).
    width = limit - above_cut
    if width > 0:
        y_start = weight_over
        y_end = weight_over + weight_at
        y_limit = y_start + (y_end - y_start) * min(width / at_cut, 1.0)
        area += 0.5 * (y_start + y_limit) * min(width, at_cut)
    return area / (n_regions * n_neg * fpr_limit)

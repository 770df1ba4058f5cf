"""Exact rank metrics: AUROC, average precision and F1-max, by sorting, never a threshold grid.

All three depend only on how each anomalous score ranks among the normal ones. We sort the
normal scores once (one copy, in place) and look up each distinct anomalous score in them:
for a value ``v`` that gives the normal scores below and equal to ``v``, from which

- AUROC = sum over anomalous ``p`` of (#normal < p + #normal <= p) / (2 n0 n1), the
  Mann-Whitney statistic with ties given half credit, equal to ``roc_auc_score``;
- AP = sum over distinct anomalous values ``v`` of (#anomalous == v / n1) * precision(>= v),
  the step sum of ``average_precision_score``;
- F1-max = max over thresholds of 2 TP / (TP + FP + n1); it is reached at a threshold equal
  to an anomalous score (raising the threshold to the next anomalous value keeps TP and
  cannot add FP), so the distinct anomalous values are the only candidates.

Counts are integers, so the results are unchanged by any strictly increasing transform.
Undefined cases return NaN rather than raising, so a category with only normal images
does not stop a run: AUROC without either class, AP and F1-max without anomalous samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from adcore.metrics.inputs import check_finite_sorted, iter_chunks, split_pixels, split_scores


@dataclass(frozen=True)
class RankCounts:
    """Per distinct anomalous score ``v`` (ascending): anomalous at ``v``, normal < and = ``v``."""

    n_neg: int
    n_pos: int
    values: np.ndarray  # [U] the distinct anomalous scores, ascending
    pos_at: np.ndarray  # [U] int64
    neg_below: np.ndarray  # [U] int64
    neg_equal: np.ndarray  # [U] int64


def rank_counts(negatives: np.ndarray, positives: np.ndarray) -> RankCounts:
    """Normal scores [n0], anomalous scores [n1] -> counts; both arrays are sorted in place."""
    negatives.sort()
    positives.sort()
    check_finite_sorted(negatives, positives)
    n_pos = positives.size
    if n_pos == 0:
        empty = np.zeros(0, np.int64)
        return RankCounts(negatives.size, 0, positives[:0], empty, empty, empty)
    new_value = np.empty(n_pos, np.bool_)
    new_value[0] = True
    np.not_equal(positives[1:], positives[:-1], out=new_value[1:])
    starts = np.flatnonzero(new_value)
    del new_value
    values = positives[starts]
    pos_at = np.diff(np.append(starts, n_pos))
    neg_below = np.empty(values.size, np.int64)
    neg_equal = np.empty(values.size, np.int64)
    for part in iter_chunks(values.size):
        neg_below[part] = np.searchsorted(negatives, values[part], side="left")
        neg_equal[part] = np.searchsorted(negatives, values[part], side="right") - neg_below[part]
    return RankCounts(negatives.size, n_pos, values, pos_at, neg_below, neg_equal)


def auroc_from_counts(counts: RankCounts) -> float:
    """Mann-Whitney U / (n0 n1), ties counted half: ``roc_auc_score``."""
    if counts.n_pos == 0 or counts.n_neg == 0:
        return float("nan")
    twice_u = int(np.dot(counts.pos_at, 2 * counts.neg_below + counts.neg_equal))
    return twice_u / (2.0 * counts.n_neg * counts.n_pos)


def _true_false_positives(counts: RankCounts) -> tuple[np.ndarray, np.ndarray]:
    """TP and FP when predicting anomalous for scores >= each distinct anomalous value."""
    true_pos = counts.n_pos - (np.cumsum(counts.pos_at) - counts.pos_at)
    false_pos = counts.n_neg - counts.neg_below
    return true_pos, false_pos


def ap_from_counts(counts: RankCounts) -> float:
    """Sum of (recall step) x precision over distinct thresholds: ``average_precision_score``."""
    if counts.n_pos == 0:
        return float("nan")
    true_pos, false_pos = _true_false_positives(counts)
    precision = true_pos / (true_pos + false_pos)
    return float(np.dot(counts.pos_at, precision) / counts.n_pos)


def f1_max_from_counts(counts: RankCounts) -> float:
    """max over thresholds of 2PR/(P+R) = 2TP/(TP+FP+n1)."""
    if counts.n_pos == 0:
        return float("nan")
    true_pos, false_pos = _true_false_positives(counts)
    return float(np.max(2.0 * true_pos / (true_pos + false_pos + counts.n_pos)))


def f1_threshold_from_counts(counts: RankCounts) -> float | None:
    """The threshold t of the F1-max (predict anomalous when score >= t); the lowest wins a
    tie. None without anomalies."""
    if counts.n_pos == 0:
        return None
    true_pos, false_pos = _true_false_positives(counts)
    f1 = 2.0 * true_pos / (true_pos + false_pos + counts.n_pos)
    return float(counts.values[int(np.argmax(f1))])


def image_f1_threshold(scores: Any, labels: Any) -> float | None:
    """F1-optimal threshold on image scores [N] (the operating point of ``image_f1_max``)."""
    return f1_threshold_from_counts(rank_counts(*split_scores(scores, labels)))


def pixel_f1_threshold(maps: Any, masks: Any) -> float | None:
    """F1-optimal threshold over all pixels (the operating point of ``pixel_f1_max``)."""
    return f1_threshold_from_counts(rank_counts(*split_pixels(maps, masks)))


def image_auroc(scores: Any, labels: Any) -> float:
    """AUROC of image scores [N] against labels [N] (1 anomalous); NaN if one class is absent."""
    return auroc_from_counts(rank_counts(*split_scores(scores, labels)))


def image_ap(scores: Any, labels: Any) -> float:
    """Average precision of image scores [N]; NaN without anomalous images."""
    return ap_from_counts(rank_counts(*split_scores(scores, labels)))


def image_f1_max(scores: Any, labels: Any) -> float:
    """Best F1 over thresholds on image scores [N]; NaN without anomalous images."""
    return f1_max_from_counts(rank_counts(*split_scores(scores, labels)))


def pixel_auroc(maps: Any, masks: Any) -> float:
    """AUROC over all pixels of maps [N,H,W] (or a list of [H,W]) against masks."""
    return auroc_from_counts(rank_counts(*split_pixels(maps, masks)))


def pixel_ap(maps: Any, masks: Any) -> float:
    """Average precision over all pixels; NaN when no pixel is anomalous."""
    return ap_from_counts(rank_counts(*split_pixels(maps, masks)))


def pixel_f1_max(maps: Any, masks: Any) -> float:
    """Best F1 over thresholds over all pixels; NaN when no pixel is anomalous."""
    return f1_max_from_counts(rank_counts(*split_pixels(maps, masks)))

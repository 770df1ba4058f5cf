"""Image recall at a false-positive rate: the share of anomalous images flagged when the
threshold lets at most ``fpr`` of the normal images through (a production line's view)."""

import math

import numpy as np

from adcore.api import EvalData


def recall_at_fpr(data: EvalData, fpr: float) -> float:
    """Flagged means ``score > t``, with ``t`` the lowest threshold flagging at most
    ``floor(fpr * n_normal)`` normal images; NaN without both classes."""
    scores, labels = np.asarray(data.scores, float), np.asarray(data.labels)  # [N], [N]
    normal, anomalous = scores[labels == 0], scores[labels == 1]
    if len(normal) == 0 or len(anomalous) == 0:
        return math.nan
    allowed = math.floor(fpr * len(normal))
    threshold = np.sort(normal)[::-1][allowed] if allowed < len(normal) else -np.inf
    return float((anomalous > threshold).mean())

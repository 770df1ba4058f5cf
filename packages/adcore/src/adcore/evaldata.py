"""What a metric sees for one category: every test image's score, map and ground truth."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class EvalData:
    """Scores and labels per image; maps and masks per pixel.

    ``maps``/``masks`` are either stacked arrays [N,H,W] (evaluation at the method's input
    size) or sequences of [H_i,W_i] arrays (evaluation at each image's original size).
    """

    scores: np.ndarray  # [N] float
    labels: np.ndarray  # [N] int, 1 anomalous
    maps: np.ndarray | Sequence[np.ndarray]  # [N,H,W] float32
    masks: np.ndarray | Sequence[np.ndarray]  # [N,H,W] bool

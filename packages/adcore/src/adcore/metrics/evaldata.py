"""What a metric sees for one category: every test image's score, map and ground truth."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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

    @functools.cached_property
    def image_counts(self) -> Any:
        """Rank counts of the image scores, sorted once for every image metric."""
        from adcore.metrics.inputs import split_scores
        from adcore.metrics.ranking import rank_counts

        return rank_counts(*split_scores(self.scores, self.labels))

    @functools.cached_property
    def pixel_counts(self) -> Any:
        """Rank counts of all pixels, sorted once for every pixel metric (the costly sort)."""
        from adcore.metrics.inputs import split_pixels
        from adcore.metrics.ranking import rank_counts

        return rank_counts(*split_pixels(self.maps, self.masks))

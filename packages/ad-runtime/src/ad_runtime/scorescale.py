"""A method-independent score for deployment: 0 to 1, exactly 0.5 at the decision threshold.

Raw image scores live on each method's own scale (a Mahalanobis distance, a cosine
distance, a probability), so a line engineer cannot read 4.49 or 0.19 without the run. The
normalised score maps the raw one piecewise linearly through three anchors taken from the
run's own test scores: the lowest test score -> 0, the threshold -> 0.5, the highest test
score -> 1, clipped to [0, 1]::

    s <= t:  0.5 * (s - low) / (t - low)
    s >= t:  0.5 + 0.5 * (s - t) / (high - t)

It is monotonic in the raw score, so it ranks images exactly as the method does, and
``normalised >= 0.5`` is the same decision as ``raw >= threshold``. It is not a probability.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScoreScale:
    """The three anchors: the run's lowest test score, the threshold, the highest one."""

    low: float
    threshold: float
    high: float

    @classmethod
    def from_scores(cls, scores: np.ndarray, threshold: float) -> ScoreScale:
        """Anchors from a run's test scores [N]; a threshold outside them widens the range."""
        return cls(
            min(float(np.min(scores)), threshold), threshold, max(float(np.max(scores)), threshold)
        )

    def normalise(self, scores: np.ndarray) -> np.ndarray:
        """Raw scores [N] -> normalised [N] in [0, 1]; 0.5 exactly at the threshold."""
        scores = np.asarray(scores, dtype=np.float64)
        below = self.threshold - self.low
        above = self.high - self.threshold
        lower = 0.5 * (scores - self.low) / below if below > 0 else np.zeros_like(scores)
        upper = 0.5 + 0.5 * (scores - self.threshold) / above if above > 0 else np.ones_like(scores)
        return np.clip(np.where(scores < self.threshold, lower, upper), 0.0, 1.0)

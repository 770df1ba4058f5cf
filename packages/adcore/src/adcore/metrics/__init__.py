"""Exact, sort-based anomaly detection metrics; each returns a float (NaN when undefined)."""

from adcore.metrics.pro import aupro
from adcore.metrics.ranking import (
    image_ap,
    image_auroc,
    image_f1_max,
    image_f1_threshold,
    pixel_ap,
    pixel_auroc,
    pixel_f1_max,
    pixel_f1_threshold,
)

__all__ = [
    "aupro",
    "image_ap",
    "image_auroc",
    "image_f1_max",
    "image_f1_threshold",
    "pixel_ap",
    "pixel_auroc",
    "pixel_f1_max",
    "pixel_f1_threshold",
]

"""The pictures ``ad-runtime serve`` returns on request: the anomaly map and an overlay.

- ``map=tiff``: the raw map [S,S] as a float32 TIFF, the values of ``ad predict``'s
  ``maps/*.tiff`` unchanged.
- ``map=png``: the map as an 8-bit grey PNG, linear from its lowest value (0) to its
  highest (255); the response gives that range, so ``value = low + (high - low) * v / 255``.
- ``overlay=1``: the image as the model saw it (decoded, resized, cropped: [S,S,3]) with
  the map blended over it in a black-red-yellow ramp. With a pixel threshold in the bundle
  the ramp has two linear pieces meeting at the threshold (warm colours mean "above the
  pixel threshold" on every image); without one it spans the map's own range.
"""

from __future__ import annotations

import io

import numpy as np

from ad_runtime.mapfiles import map_tiff

MAP_FORMATS = ("png", "tiff")


def _png(pixels: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def map_image(anomaly_map: np.ndarray, kind: str) -> tuple[bytes, tuple[float, float]]:
    """A raw map [S,S] -> (file bytes of ``kind`` in :data:`MAP_FORMATS`, (low, high))."""
    low, high = float(anomaly_map.min()), float(anomaly_map.max())
    if kind == "tiff":
        return map_tiff(anomaly_map), (low, high)
    span = high - low if high > low else 1.0
    grey = np.rint((anomaly_map.astype(np.float64) - low) * (255.0 / span))
    return _png(np.clip(grey, 0, 255).astype(np.uint8)), (low, high)


def scaled_map(anomaly_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """[S,S] raw -> [S,S] in [0,1]: two linear pieces with 0.5 at ``threshold`` when given."""
    values = anomaly_map.astype(np.float64)
    low, high = float(values.min()), float(values.max())
    if threshold is None:
        return (values - low) / (high - low) if high > low else np.zeros_like(values)
    low, high = min(low, threshold), max(high, threshold)
    below = 0.5 * (values - low) / (threshold - low) if threshold > low else np.zeros_like(values)
    above = 0.5 + 0.5 * (values - threshold) / (high - threshold) if high > threshold else below
    return np.clip(np.where(values < threshold, below, above), 0.0, 1.0)


def overlay_png(pixels: np.ndarray, anomaly_map: np.ndarray, threshold: float | None) -> bytes:
    """The model's input image uint8 [S,S,3] and its raw map [S,S] -> an overlay PNG [S,S,3]."""
    scaled = scaled_map(anomaly_map, threshold)[..., None]  # [S,S,1]
    heat = np.clip(np.concatenate([3 * scaled, 3 * scaled - 1, 3 * scaled - 2], axis=2), 0, 1)
    alpha = 0.15 + 0.55 * scaled  # the image stays readable where all is well
    blended = (1 - alpha) * pixels / 255.0 + alpha * heat
    return _png(np.rint(255 * blended).astype(np.uint8))

"""The prediction pass: every test image through ``method.predict``, in timed batches.

Loader workers decode and resize; each ``predict`` call is bracketed by device
synchronisation, so its time is the method's alone. Those per-batch times are what
``ad eval``'s throughput and per-image figures are made of (:mod:`adcore.run.efficiency`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from adcore.contracts.dataset import Sample
from adcore.contracts.method import Method, Runtime
from adcore.data.decoding import Decoding
from adcore.data.loading import make_loader
from adcore.infra.device import synchronizer
from adcore.infra.errors import PluginError


@dataclass
class PredictionPass:
    """Scores, maps and masks of a sample list, and the time of each ``predict`` call."""

    scores: np.ndarray  # [N] float64
    maps: np.ndarray  # [N,S,S] float32 at the method's output size
    masks: np.ndarray  # [N,S,S] bool, through the same geometry (its mask filter)
    batch_sizes: np.ndarray  # [T] images of each predict call
    batch_seconds: np.ndarray  # [T] device-synchronised seconds of each predict call

    @property
    def predict_seconds(self) -> float:
        return float(self.batch_seconds.sum())


def run_prediction_pass(
    method: Method,
    runtime: Runtime,
    samples: Sequence[Sample],
    batch_size: int,
    num_workers: int,
    method_name: str,
    advance: Callable[[int], None] | None = None,
    decoding: Decoding | None = None,
) -> PredictionPass:
    """Predict every sample; raises :class:`PluginError` when the method's outputs have the
    wrong shapes (scores must be [B], maps [B,S,S] at ``method.geometry.output_size``)."""
    import torch

    size = method.geometry.output_size
    scores = np.empty(len(samples), dtype=np.float64)
    maps = np.empty((len(samples), size, size), dtype=np.float32)
    masks = np.empty((len(samples), size, size), dtype=bool)
    sizes, seconds = [], []
    sync = synchronizer(runtime.device)
    for batch in make_loader(samples, method.geometry, batch_size, num_workers, decoding=decoding):
        images = batch["image"].to(runtime.device, non_blocking=True)  # [B,3,S,S] uint8
        with torch.no_grad(), runtime.autocast():
            sync()
            start = time.perf_counter()
            prediction = method.predict(images)
            sync()
            seconds.append(time.perf_counter() - start)
        index = batch["index"].numpy()
        sizes.append(len(index))
        batch_maps = prediction.maps.float().cpu().numpy()  # [B,S,S]
        expected = (len(index), size, size)
        if batch_maps.shape != expected or prediction.scores.shape != (len(index),):
            raise PluginError(
                f"Method {method_name!r} returned scores {tuple(prediction.scores.shape)} "
                f"and maps {batch_maps.shape}; expected ({len(index)},) and {expected}.",
                "This is a bug in the method plugin; report it to its authors.",
            )
        scores[index] = prediction.scores.float().cpu().numpy()
        maps[index] = batch_maps
        masks[index] = batch["mask"].numpy().astype(bool)
        if advance is not None:
            advance(len(index))
    return PredictionPass(scores, maps, masks, np.asarray(sizes), np.asarray(seconds))

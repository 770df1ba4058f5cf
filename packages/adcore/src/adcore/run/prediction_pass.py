"""The prediction pass: every test image through ``method.predict``, in timed batches.

Loader workers decode and resize; each ``predict`` call is bracketed by device
synchronisation, so its time is the method's alone. Those per-batch times are what
``ad eval``'s throughput and per-image figures are made of (:mod:`adcore.run.efficiency`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ad_runtime.decoding import Decoding
from adcore.contracts.dataset import Sample
from adcore.contracts.method import Method, Runtime, TransductiveMethod
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


@dataclass
class PredictedBatch:
    """One ``predict`` call's outputs, checked, on the CPU."""

    index: np.ndarray  # [B] positions in the sample list
    scores: np.ndarray  # [B] float64
    maps: np.ndarray  # [B,S,S] float32 at the method's output size
    masks: np.ndarray  # [B,S,S] bool, through the same geometry (its mask filter)
    seconds: float  # device-synchronised time of the predict call


def predicted_batches(
    method: Method,
    runtime: Runtime,
    samples: Sequence[Sample],
    batch_size: int,
    num_workers: int,
    method_name: str,
    decoding: Decoding | None = None,
) -> Iterator[PredictedBatch]:
    """Every sample through ``method.predict`` in batches: the one prediction loop of
    ``ad eval`` and ``ad predict``. A :class:`TransductiveMethod` gets the samples as one
    set (``predict_set``), given back as one batch. Raises :class:`PluginError` when the
    outputs have the wrong shapes (scores [B], maps [B,S,S] at ``geometry.output_size``)."""
    import torch

    loader = make_loader(samples, method.geometry, batch_size, num_workers, decoding=decoding)
    if isinstance(method, TransductiveMethod):
        yield _predicted_set(method, runtime, loader, len(samples), method_name)
        return
    sync = synchronizer(runtime.device)
    for batch in loader:
        images = batch["image"].to(runtime.device, non_blocking=True)  # [B,3,S,S] uint8
        with torch.no_grad(), runtime.autocast():
            sync()
            start = time.perf_counter()
            prediction = method.predict(images)
            sync()
            seconds = time.perf_counter() - start
        index = batch["index"].numpy()
        masks = batch["mask"].numpy().astype(bool)
        yield _checked(prediction, index, masks, seconds, method, method_name)


def _predicted_set(
    method: TransductiveMethod, runtime: Runtime, loader: Any, size: int, method_name: str
) -> PredictedBatch:
    """The whole set through ``predict_set`` in one call, timed as one (loading included:
    the method consumes the batches as the loader decodes them)."""
    import torch

    indexes, masks = [], []

    def batches() -> Iterator[Any]:
        for batch in loader:
            indexes.append(batch["index"].numpy())
            masks.append(batch["mask"].numpy().astype(bool))
            yield batch["image"].to(runtime.device, non_blocking=True)  # [b,3,S,S] uint8

    sync = synchronizer(runtime.device)
    with torch.no_grad(), runtime.autocast():
        sync()
        start = time.perf_counter()
        prediction = method.predict_set(batches(), size)
        sync()
        seconds = time.perf_counter() - start
    index = np.concatenate(indexes) if indexes else np.zeros(0, dtype=np.int64)
    side = method.geometry.output_size
    mask = np.concatenate(masks) if masks else np.zeros((0, side, side), dtype=bool)
    return _checked(prediction, index, mask, seconds, method, method_name)


def _checked(
    prediction: Any,
    index: np.ndarray,
    masks: np.ndarray,
    seconds: float,
    method: Method,
    method_name: str,
) -> PredictedBatch:
    """A predict call's outputs on the CPU, refused when their shapes are not [B], [B,S,S]."""
    size = method.geometry.output_size
    maps = prediction.maps.float().cpu().numpy()  # [B,S,S]
    expected = (len(index), size, size)
    if maps.shape != expected or tuple(prediction.scores.shape) != (len(index),):
        raise PluginError(
            f"Method {method_name!r} returned scores {tuple(prediction.scores.shape)} "
            f"and maps {maps.shape}; expected ({len(index)},) and {expected}.",
            "This is a bug in the method plugin; report it to its authors.",
        )
    scores = prediction.scores.float().cpu().numpy().astype(np.float64)
    return PredictedBatch(index, scores, maps, masks, seconds)


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
    """Predict every sample and keep the scores, maps and masks (see :func:`predicted_batches`)."""
    size = method.geometry.output_size
    scores = np.empty(len(samples), dtype=np.float64)
    maps = np.empty((len(samples), size, size), dtype=np.float32)
    masks = np.empty((len(samples), size, size), dtype=bool)
    sizes, seconds = [], []
    batches = predicted_batches(
        method, runtime, samples, batch_size, num_workers, method_name, decoding
    )
    for batch in batches:
        scores[batch.index], maps[batch.index], masks[batch.index] = (
            batch.scores,
            batch.maps,
            batch.masks,
        )
        sizes.append(len(batch.index))
        seconds.append(batch.seconds)
        if advance is not None:
            advance(len(batch.index))
    return PredictionPass(scores, maps, masks, np.asarray(sizes), np.asarray(seconds))

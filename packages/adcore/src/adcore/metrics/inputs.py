"""Bringing scores, maps and ground truth into flat numpy arrays, one copy at most.

Metrics accept numpy arrays or torch tensors (duck-typed, so torch is never imported here),
maps stacked as [N,H,W] or given as a sequence of [H_i,W_i]. Scores keep their dtype (a cast
from float64 to float32 could merge distinct scores and change a rank metric); only
half-precision and integer-valued inputs are widened where numpy could not sort them alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from adcore.infra.errors import DataError


def to_numpy(array: Any) -> np.ndarray:
    """numpy view of an array or torch tensor (moved to the CPU; bf16/fp16 widened to fp32)."""
    if hasattr(array, "detach"):
        tensor = array.detach().cpu()
        if tensor.dtype.is_floating_point and tensor.element_size() < 4:
            tensor = tensor.float()
        return tensor.numpy()
    out = np.asarray(array)
    if out.dtype == np.float16:
        return out.astype(np.float32)
    return out


def as_binary(truth: np.ndarray) -> np.ndarray:
    """Ground truth as bool: nonzero is anomalous (so 0/1 and 0/255 masks both work)."""
    return truth if truth.dtype == np.bool_ else truth != 0


def score_dtype(arrays: Sequence[np.ndarray]) -> np.dtype:
    """Common dtype of score arrays; bool becomes uint8 so it sorts as numbers."""
    dtype = np.result_type(*arrays) if arrays else np.dtype(np.float32)
    if dtype == np.bool_:
        return np.dtype(np.uint8)
    if dtype.kind not in "fiu":
        raise DataError(
            f"scores have dtype {dtype}, which cannot be ranked.",
            "Return real-valued scores and maps from the method.",
        )
    return dtype


def image_pairs(maps: Any, masks: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """[N,H,W] arrays or sequences of [H_i,W_i] -> per-image (map, bool mask) pairs."""
    map_list = _per_image(maps, "maps")
    mask_list = _per_image(masks, "masks")
    if len(map_list) != len(mask_list):
        raise DataError(
            f"{len(map_list)} anomaly maps but {len(mask_list)} ground-truth masks.",
            "Pass one mask per map.",
        )
    pairs = []
    for index, (anomaly_map, mask) in enumerate(zip(map_list, mask_list, strict=True)):
        if anomaly_map.shape != mask.shape:
            raise DataError(
                f"image {index}: anomaly map of shape {anomaly_map.shape} but mask of shape "
                f"{mask.shape}.",
                "Resize maps and masks to one size (evaluation.resolution) before the metrics.",
            )
        pairs.append((anomaly_map, as_binary(mask)))
    return pairs


def _per_image(stack: Any, what: str) -> list[np.ndarray]:
    if isinstance(stack, np.ndarray) or hasattr(stack, "detach"):
        array = to_numpy(stack)
        if array.ndim != 3:
            raise DataError(
                f"{what} must be [N,H,W] or a sequence of [H,W] arrays, got shape {array.shape}.",
                "Stack one 2-D map per image.",
            )
        return list(array)
    images = [to_numpy(image) for image in stack]
    for image in images:
        if image.ndim != 2:
            raise DataError(
                f"each of the {what} must be a 2-D [H,W] array, got shape {image.shape}.",
                "Squeeze channel dimensions before the metrics.",
            )
    return images


def split_scores(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """[N] scores, [N] labels -> (normal scores [n0], anomalous scores [n1]) as copies."""
    score_array = to_numpy(scores).ravel()
    label_array = as_binary(to_numpy(labels).ravel())
    if score_array.shape != label_array.shape:
        raise DataError(
            f"{score_array.size} scores but {label_array.size} labels.",
            "Pass one label per score.",
        )
    score_array = score_array.astype(score_dtype([score_array]), copy=False)
    return score_array[~label_array], score_array[label_array]


def split_pixels(maps: Any, masks: Any) -> tuple[np.ndarray, np.ndarray]:
    """Maps and masks -> (normal pixel scores [n0], anomalous pixel scores [n1]).

    Both outputs are allocated once and filled image by image, so peak memory is one copy
    of the scores and never a full-size index or float64 array.
    """
    pairs = image_pairs(maps, masks)
    dtype = score_dtype([anomaly_map for anomaly_map, _ in pairs])
    counts = np.array([[mask.size, np.count_nonzero(mask)] for _, mask in pairs], np.int64)
    n_pos = int(counts[:, 1].sum()) if pairs else 0
    n_neg = int(counts[:, 0].sum()) - n_pos if pairs else 0
    negatives = np.empty(n_neg, dtype)
    positives = np.empty(n_pos, dtype)
    at_neg = at_pos = 0
    for (anomaly_map, mask), (size, n_mask) in zip(pairs, counts, strict=True):
        positives[at_pos : at_pos + n_mask] = anomaly_map[mask]
        negatives[at_neg : at_neg + size - n_mask] = anomaly_map[~mask]
        at_pos += n_mask
        at_neg += size - n_mask
    return negatives, positives


def iter_chunks(length: int, chunk: int = 1 << 22) -> Iterator[slice]:
    """Slices covering ``range(length)`` in chunks, to bound index temporaries."""
    for start in range(0, length, chunk):
        yield slice(start, min(start + chunk, length))


def nan_error() -> DataError:
    """A NaN score has no rank, so no rank metric exists for it."""
    return DataError(
        "scores or anomaly maps contain NaN.",
        "Check the method's output for NaN (e.g. a division by zero in normalisation).",
    )


def check_finite_sorted(*sorted_arrays: np.ndarray) -> None:
    """Sorted float arrays hold any NaN at their end."""
    for array in sorted_arrays:
        if array.size and array.dtype.kind == "f" and np.isnan(array[-1]):
            raise nan_error()

"""Why a metric is n/a, and what the evaluation resolution did to the masks.

A value that cannot be computed is reported as n/a *with its reason*, in the console and in
every result file (``metrics.csv``'s ``notes``, the summaries, ``summary.json``), so "n/a"
never reads as a failure of the method or of the tool.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from adcore.contracts.dataset import Sample

RESOLUTION_FIX = "evaluation.resolution: original compares at each mask's own size"
# notes are joined with "; " in metrics.csv: none may hold a semicolon


def vanished_masks(samples: Sequence[Sample], masks: np.ndarray) -> int:
    """Anomalous images with a mask file whose defect lost every pixel at ``masks``' size.

    samples: [N]; masks: [N,S,S] bool at the evaluation resolution. Masks that are empty in
    the file are refused earlier by the data check, so an empty mask here has vanished in
    the resize with the method's mask filter (thin scratches, small spots).
    """
    if not len(samples):
        return 0
    anomalous = np.array([s.label == 1 and s.mask_path is not None for s in samples])
    empty = ~masks.reshape(len(samples), -1).any(axis=1)  # [N]
    return int((anomalous & empty).sum())


def class_reason(labels: np.ndarray) -> str | None:
    """Why image metrics are undefined: one class only; None when both are present."""
    anomalous = int(np.sum(labels == 1))
    normal = int(labels.size - anomalous)
    if anomalous == 0:
        return f"one class only: the test split has only normal images ({normal})"
    if normal == 0:
        return f"one class only: the test split has only anomalous images ({anomalous})"
    return None


def pixel_reason(
    labels: np.ndarray, has_masks: bool, any_defect_pixel: bool, vanished: int, side: int | None
) -> str:
    """Why pixel metrics are undefined (called only when they are)."""
    if not has_masks:
        return "anomalous images without masks: pixel metrics are not computed"
    reason = class_reason(labels)
    if reason is not None and not int(np.sum(labels == 1)):
        return reason
    if not any_defect_pixel:
        if vanished:
            where = f" ({side}x{side} px)" if side else ""
            return (
                f"the mask of every anomalous image ({vanished}) vanished at the evaluation "
                f"resolution{where} ({RESOLUTION_FIX})"
            )
        return "no mask has a defect pixel"
    return "one class only: every pixel is anomalous"


def metric_notes(
    values: Mapping[str, float],
    levels: Mapping[str, str],
    labels: np.ndarray,
    has_masks: bool,
    any_defect_pixel: bool,
    vanished: int,
    side: int | None,
) -> list[str]:
    """One note per reason: the n/a metrics of a level and why, then the vanished masks.

    values: metric -> value (NaN when undefined); levels: metric -> "image" or "pixel";
    labels: [N] 1 anomalous; side: the evaluation resolution when masks were resized.
    """
    notes = []
    for level in ("image", "pixel"):
        undefined = [n for n, v in values.items() if levels.get(n) == level and math.isnan(v)]
        if not undefined:
            continue
        if level == "image":
            reason = class_reason(labels) or "undefined for these scores"
        else:
            reason = pixel_reason(labels, has_masks, any_defect_pixel, vanished, side)
        notes.append(f"{', '.join(undefined)} n/a: {reason}")
    anomalous = int(np.sum(labels == 1))
    if vanished and any_defect_pixel:
        where = f" ({side}x{side} px)" if side else ""
        notes.append(
            f"{vanished} of {anomalous} anomalous images lost their whole mask at the evaluation "
            f"resolution{where}: their defects count as normal pixels ({RESOLUTION_FIX})"
        )
    return notes


def category_notes(
    values: Mapping[str, float],
    metrics: Mapping[str, Any],
    samples: Sequence[Sample],
    labels: np.ndarray,
    masks: np.ndarray,
    eval_masks: np.ndarray | Sequence[np.ndarray],
) -> tuple[list[str], int]:
    """The notes of one evaluated category and its vanished-mask count.

    values: metric -> value; metrics: metric -> spec (with ``level``); labels: [N];
    masks: [N,S,S] bool at the method's resolution; eval_masks: what the metrics compared
    (``masks`` itself, or each mask at its original size, where nothing can vanish).
    """
    at_input = eval_masks is masks
    vanished = vanished_masks(samples, masks) if at_input else 0
    has_masks = all(s.mask_path is not None for s in samples if s.label == 1)
    any_defect_pixel = any(bool(np.any(m)) for m in eval_masks)
    levels = {name: str(getattr(spec, "level", "image")) for name, spec in metrics.items()}
    side = int(masks.shape[-1]) if at_input else None
    notes = metric_notes(values, levels, labels, has_masks, any_defect_pixel, vanished, side)
    return notes, vanished

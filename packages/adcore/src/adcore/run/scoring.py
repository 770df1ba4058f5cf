"""Scoring a category: its prediction pass against the ground truth, through each metric.

:class:`CategoryScores` carries the metric values and the category's notes: everything the
evaluation wants the user to know about how a number was (or was not) computed. A category's
notes are gathered here (checks of the data add theirs to ``notes``) and shown with its
result line.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from ad_runtime.decoding import Decoding
from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.dataset import Sample
from adcore.contracts.records import MetricSpec
from adcore.metrics.evaldata import EvalData
from adcore.run.prediction_pass import PredictionPass


@dataclass
class CategoryScores:
    """Metric values by name (NaN where undefined) and the notes explaining them."""

    values: dict[str, float]
    notes: list[str] = field(default_factory=list)
    vanished_masks: int = 0  # anomalous images whose mask vanished at the input resolution


def evaluation_data(
    predicted: PredictionPass,
    samples: Sequence[Sample],
    geometry: Preprocessing,
    resolution: Literal["input", "original"],
    decoding: Decoding | None = None,
) -> EvalData:
    """What the metrics see: maps at the method's size, or at each mask's own size."""
    from adcore.run.resolution import to_original_resolution

    labels = np.array([s.label for s in samples])  # [N]
    if resolution == "original":
        maps, masks = to_original_resolution(predicted.maps, samples, geometry, decoding)
        return EvalData(scores=predicted.scores, labels=labels, maps=maps, masks=masks)
    return EvalData(
        scores=predicted.scores, labels=labels, maps=predicted.maps, masks=predicted.masks
    )


def score_category(
    metrics: Mapping[str, MetricSpec],
    data: EvalData,
    samples: Sequence[Sample],
    input_masks: np.ndarray,
    undefined: Mapping[str, str] | None = None,
) -> CategoryScores:
    """Every metric on ``data``; pixel metrics are n/a (NaN, with a note) unless every
    anomalous image has a mask, since a missing mask would count its defect as normal.

    input_masks: [N,S,S] bool at the method's input size, to count masks that vanished
    there (:func:`adcore.run.notes.category_notes` gives every n/a its reason). ``undefined``:
    metric levels the data set cannot support (``Dataset.undefined_levels``) with the
    reason, e.g. pixel metrics of an image-level-only medical set; those are not computed."""
    from adcore.run.notes import category_notes

    undefined = dict(undefined or {})
    computed = {n: spec for n, spec in metrics.items() if spec.level not in undefined}
    has_masks = all(s.mask_path is not None for s in samples if s.label == 1)
    values = {
        name: float(spec.factory(spec.config())(data))
        if has_masks or spec.level == "image"
        else math.nan
        for name, spec in computed.items()
    }
    notes, vanished = category_notes(
        values, computed, samples, data.labels, input_masks, data.masks
    )
    levels = {spec.level for spec in metrics.values()}
    notes[:0] = [f"{lv} metrics n/a: {why}" for lv, why in undefined.items() if lv in levels]
    values = {name: values.get(name, math.nan) for name in metrics}
    return CategoryScores(values, notes, vanished)

"""Calibrate a model on good parts: score the images, choose the thresholds
(:mod:`ad_runtime.thresholds`), describe the images. One loop for every model kind: a
bundle (:class:`ad_runtime.model.Model`, ``ad calibrate --model``, ``ad-runtime calibrate``)
or a run's fitted PyTorch method (``ad calibrate --run``), each given as its ``batches``."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.errors import DataError
from ad_runtime.thresholds import (
    Calibration,
    ImageSet,
    PixelTail,
    Rule,
    choose_image_threshold,
    images_digest,
    now_utc,
    sample_size_warnings,
)

# (positions in paths, raw scores [b], raw maps [b,S,S]) batch by batch: Model.batches
Batches = Callable[[Sequence[Path], int], Iterator[tuple[range, np.ndarray, np.ndarray]]]

DEFAULT_PIXEL_FPR = 0.001


def score_images(
    batches: Batches,
    images: Sequence[tuple[Path, str]],
    batch_size: int,
    tail: PixelTail | None = None,
    advance: Callable[[int], None] | None = None,
) -> np.ndarray:
    """Raw scores [N] of ``images`` ((path, key)); their maps go into ``tail`` when given."""
    scores = np.empty(len(images), dtype=np.float64)
    for part, batch_scores, maps in batches([p for p, _ in images], batch_size):
        scores[part.start : part.stop] = batch_scores
        if tail is not None:
            tail.add(maps)
        if advance is not None:
            advance(len(part))
    return scores


def image_set(images: Sequence[tuple[Path, str]], inputs: Sequence[Path]) -> ImageSet:
    return ImageSet(
        count=len(images),
        sha256=images_digest([p for p, _ in images], [k for _, k in images]),
        folders=[str(Path(p).resolve()) for p in inputs],
    )


def calibrate(
    batches: Batches,
    identity: dict[str, Any],
    normal: Sequence[tuple[Path, str]],
    normal_inputs: Sequence[Path],
    rule: Rule,
    map_pixels: int,
    defects: Sequence[tuple[Path, str]] = (),
    defect_inputs: Sequence[Path] = (),
    pixel_fpr: float | None = DEFAULT_PIXEL_FPR,
    batch_size: int = 8,
    advance: Callable[[int], None] | None = None,
) -> Calibration:
    """Score the good images (and defects) and choose the thresholds: the image threshold by
    ``rule``, the pixel threshold at ``pixel_fpr`` over the good maps' pixels (``map_pixels``
    per map: S x S; none when ``pixel_fpr`` is None). Raises ``DataError`` from the scoring
    (unreadable images) or for a rule without what it needs."""
    tail = None if pixel_fpr is None else PixelTail(pixel_fpr, len(normal) * map_pixels)
    try:
        good = score_images(batches, normal, batch_size, tail, advance)
        bad = score_images(batches, defects, batch_size, None, advance) if defects else None
    except DataError as error:
        raise DataError(
            error.problem,
            "Replace or remove those files and calibrate again: a threshold is set on every "
            "image given, so none is left out silently.",
        ) from None
    image = choose_image_threshold(good, rule, bad)
    return Calibration(
        created=now_utc(),
        model=identity,
        image=image,
        pixel=None if tail is None else tail.threshold(len(normal)),
        normal_images=image_set(normal, normal_inputs),
        defect_images=image_set(defects, defect_inputs) if defects else None,
        warnings=sample_size_warnings(image, rule),
    )


def calibrate_bundle(
    folder: Path,
    normal_inputs: Sequence[Path],
    rule: Rule,
    defect_inputs: Sequence[Path] = (),
    pixel_fpr: float | None = DEFAULT_PIXEL_FPR,
    batch_size: int = 8,
    engine: str | None = None,
    advance: Callable[[int], None] | None = None,
) -> tuple[Calibration, Path]:
    """Calibrate the bundle in ``folder`` and write ``folder/threshold.json``; returns the
    calibration and the file's path."""
    from ad_runtime.model import Model
    from ad_runtime.predictions import find_images
    from ad_runtime.thresholds import bundle_identity, write_calibration

    model = Model(folder, engine=engine, calibrated=False)
    normal = find_images(list(normal_inputs))
    defects = find_images(list(defect_inputs)) if defect_inputs else []
    side = model.bundle.outputs[1].shape[-1]
    calibration = calibrate(
        model.batches, bundle_identity(model.bundle), normal, normal_inputs, rule,
        int(side) ** 2, defects, defect_inputs, pixel_fpr, batch_size, advance,
    )  # fmt: skip
    return calibration, write_calibration(model.folder, calibration)


def describe(calibration: Calibration, path: Path) -> str:
    """What a calibration chose, in a few lines for the terminal."""
    image = calibration.image
    achieved = image.achieved
    lines = [
        f"Image threshold {image.value:.6g} ({image.source}): {achieved.false_positives} of "
        f"{achieved.normal} good images at or above it (false-positive rate "
        f"{achieved.false_positive_rate:.3g}, at most {achieved.fpr_upper:.3g} with "
        f"{achieved.confidence:.0%} confidence)"
        + ("" if achieved.recall is None else f"; recall {achieved.recall:.3g} on "
           f"{achieved.defects} defects") + ".",
    ]  # fmt: skip
    if calibration.pixel is not None:
        pixel = calibration.pixel
        lines.append(
            f"Pixel threshold {pixel.value:.6g} ({pixel.source}): good-pixel rate "
            f"{pixel.achieved.false_positive_rate:.3g}."
        )
    lines += [f"Warning: {w}" for w in calibration.warnings]
    lines.append(f"Written: {path}")
    return "\n".join(lines)

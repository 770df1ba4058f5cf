"""``ad predict --model BUNDLE``: score images with an exported bundle through the torch-free
runtime (:class:`ad_runtime.model.Model`), as ``ad predict --run`` does with the PyTorch
method: the same decoding (with the bundle's intensity range, not the inputs'),
preprocessing, score scale and files."""

from __future__ import annotations

from pathlib import Path

from ad_runtime.model import Model
from ad_runtime.predictions import find_images, write_scores
from adcore.run.predict import PredictOutput, screened_samples, write_overlays


def predict_bundle(
    folder: Path,
    inputs: list[Path],
    out_dir: Path,
    threshold: float | None = None,
    overlays: bool = True,
    batch_size: int = 8,
) -> PredictOutput:
    """Score ``inputs`` with the bundle in ``folder``; write scores.csv, maps/, overlays/.

    Every unreadable input is named at once before any map is written."""
    model = Model(folder, threshold)
    bundle, verdicts = model.bundle, model.verdicts
    images = find_images(inputs)
    screened_samples(images, bundle.category, model.decoding.max_image_pixels)
    scores, map_range = model.score_files(images, out_dir, batch_size)
    results = write_scores(images, scores, verdicts, out_dir)
    if overlays:
        pixel = bundle.thresholds.get("pixel")
        settings = {} if pixel is None else {"pixel_threshold": pixel.value}
        if pixel is not None and pixel.source.startswith("calibrated"):
            settings["pixel_label"] = "calibrated on good parts"
        write_overlays(
            results, verdicts, model.preprocessing, settings, map_range, out_dir, model.decoding
        )
    return PredictOutput(
        bundle.category, verdicts.threshold, verdicts.source, results, out_dir / "scores.csv",
        verdicts.scale, bool(bundle.weights.get("random_backbone")),
    )  # fmt: skip

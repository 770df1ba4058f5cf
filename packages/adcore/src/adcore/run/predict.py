"""``ad predict``: score new images with a method fitted and saved by ``ad eval --save-model``.

The method is rebuilt from the run's ``config.yaml`` exactly as the run built it (same
plugin, settings and seed), then its fitted state (``<category>/model.pt``) is loaded, so
the same image gets the same score as in the run. The decision threshold is the F1-optimal
image threshold on the run's test set (its ``scores.csv``) unless one is given.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.bundle import Threshold
from ad_runtime.decoding import FLOAT_MODES, Decoding, category_decoding, extrema
from ad_runtime.predictions import (
    PredictedImage,
    Verdicts,
    find_images,
    write_scores,
)
from ad_runtime.scorescale import ScoreScale
from adcore.contracts.dataset import Sample
from adcore.contracts.method import Method
from adcore.infra.errors import DataError, UsageError
from adcore.infra.files import atomic_write_bytes
from adcore.infra.suggest import did_you_mean
from adcore.metrics import image_f1_threshold
from adcore.outputs.outputkeys import unique_keys
from adcore.outputs.reporters.overlay import (
    THRESHOLDS_FILE,
    OverlayImage,
    read_at_geometry,
    render_png,
    safe_name,
)


@dataclass
class PredictOutput:
    """What ``predict`` wrote and decided."""

    category: str
    threshold: float
    threshold_source: str
    images: list[PredictedImage]
    scores_csv: Path
    scale: ScoreScale | None = None
    random_weights: bool = False  # the run's models were randomly initialised
    notes: list[str] = dataclasses.field(default_factory=list)  # e.g. inputs outside the range


def run_categories(run_dir: Path) -> list[str]:
    """Categories of a run: folders holding ``scores.csv``."""
    return sorted(p.parent.name for p in run_dir.glob("*/scores.csv"))


def pick_category(run_dir: Path, category: str | None) -> str:
    if not (run_dir / "config.yaml").is_file():
        raise DataError(
            f"{run_dir} is not a run folder (it has no config.yaml).",
            "Pass a folder written by ad eval: results/<dataset>/<method>/<experiment>.",
        )
    available = run_categories(run_dir)
    if category is None:
        if len(available) != 1:
            raise UsageError(
                f"The run {run_dir} has {len(available)} categories "
                f"({', '.join(available) or 'none'}).",
                "Choose one with --category.",
            )
        category = available[0]
    elif category not in available:
        raise DataError(
            f"Category {category!r} is not in the run {run_dir}."
            + did_you_mean(category, available),
            f"Available: {', '.join(available) or 'none'}.",
        )
    if not (run_dir / category / "model.pt").is_file():
        raise DataError(
            f"The run {run_dir} did not save a fitted model for {category!r} "
            f"({run_dir / category / 'model.pt'} is missing).",
            "Rerun ad eval with --save-model (add --set visualization.save_overlay=true for "
            "the run's pixel threshold).",
        )
    return category


def load_method(
    run_dir: Path, category: str, device: str = "auto", precision: str | None = None
) -> tuple[Any, Method, Any]:
    """The run's resolved config, its method with ``category``'s fitted state loaded, and
    the runtime (device, precision) it runs under; ``precision`` overrides the run's."""
    from adcore.config.files import load_yaml_file
    from adcore.config.problems import validate_base
    from adcore.config.resolve import resolve
    from adcore.outputs.fitted import read_fitted_state
    from adcore.plugins.registry import get_registry
    from adcore.run.components import build_method, make_runtime
    from adcore.toolkit.weights import check_fitted_state

    config = resolve(validate_base(load_yaml_file(run_dir / "config.yaml")), get_registry())
    runtime = make_runtime(config, device)
    if precision is not None:
        runtime = dataclasses.replace(runtime, precision=precision)
    method = build_method(config, runtime)
    state = read_fitted_state(run_dir / category / "model.pt")
    check_fitted_state(state, method.weights_identity(), run_dir / category / "model.pt")
    method.load_fitted_state(state)
    return config, method, runtime


def run_test_scores(run_dir: Path, category: str) -> tuple[np.ndarray, np.ndarray]:
    """The run's test image scores [N] and labels [N], from its ``scores.csv``."""
    with (run_dir / category / "scores.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    return np.array([float(r["score"]) for r in rows]), np.array([int(r["label"]) for r in rows])


def run_threshold(run_dir: Path, category: str) -> float:
    """F1-optimal image threshold on the run's test scores."""
    scores, labels = run_test_scores(run_dir, category)
    threshold = image_f1_threshold(scores, labels)
    if threshold is None:
        raise DataError(
            f"The run's test set of {category!r} has no anomalous image, so it gives no threshold.",
            "Pass one with --threshold.",
        )
    return threshold


def run_identity(run_dir: Path, category: str, config: Any) -> dict[str, Any]:
    """The model identity of a run's category: its config's fingerprint and the SHA-256 of
    its fitted state (``model.pt``), what a ``threshold.json`` of it must record."""
    from adcore.toolkit.weights import file_digest

    fitted = file_digest(run_dir / category / "model.pt", 64)
    return {"kind": "run", "config": config.fingerprint(), "fitted_sha256": fitted}


def run_decision(
    run_dir: Path, category: str, config: Any, threshold: float | None = None
) -> tuple[float, str, Threshold | None]:
    """(image threshold, its source, calibrated pixel threshold or None): ``threshold`` when
    given, else the category's ``threshold.json`` (``ad calibrate``; refused when made for
    another model), else the F1-optimal threshold on the run's test set."""
    from ad_runtime.thresholds import as_thresholds, read_calibration

    if threshold is not None:
        return threshold, "given", None
    calibration = read_calibration(run_dir / category, run_identity(run_dir, category, config))
    if calibration is not None:
        return (
            calibration.image.value,
            calibration.image.source,
            as_thresholds(calibration).get("pixel"),
        )
    return run_threshold(run_dir, category), "F1-optimal on the run's test set", None


def run_map_settings(run_dir: Path, category: str) -> dict[str, Any]:
    """Pixel threshold and colour scale saved with the run's overlays, if any."""
    path = run_dir / category / "overlays" / THRESHOLDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def predict(
    run_dir: Path,
    inputs: list[Path],
    out_dir: Path,
    threshold: float | None = None,
    category: str | None = None,
    device: str = "auto",
    overlays: bool = True,
) -> PredictOutput:
    """Score ``inputs`` with the run's fitted method; write scores.csv, maps/ and overlays/."""
    from ad_runtime.mapfiles import write_map
    from adcore.run.prediction_pass import predicted_batches

    category = pick_category(run_dir, category)
    images = find_images(inputs)
    config, method, runtime = load_method(run_dir, category, device)
    decision, source, pixel = run_decision(run_dir, category, config, threshold)
    data = config.base.data
    samples = screened_samples(images, category, data.max_image_pixels)
    decoding, notes = fitted_decoding(run_dir, category, [p for p, _ in images], data)
    scores = np.empty(len(samples), dtype=np.float64)
    low, high = math.inf, -math.inf
    name = config.method.spec.name
    for batch in predicted_batches(method, runtime, samples, data.batch_size, 0, name, decoding):
        scores[batch.index] = batch.scores
        low, high = min(low, float(batch.maps.min())), max(high, float(batch.maps.max()))
        for i, value in zip(batch.index, batch.maps, strict=True):
            write_map(out_dir / "maps" / f"{images[i][1]}.tiff", value)
    scale = ScoreScale.from_scores(run_test_scores(run_dir, category)[0], decision)
    verdicts = Verdicts(category, decision, source, scale)
    results = write_scores(images, scores, verdicts, out_dir)
    if overlays:
        settings = run_map_settings(run_dir, category)
        if pixel is not None:
            settings.update(pixel_threshold=pixel.value, pixel_label="calibrated on good parts")
        write_overlays(results, verdicts, method.geometry, settings, (low, high), out_dir, decoding)
    return PredictOutput(
        category,
        decision,
        source,
        results,
        out_dir / "scores.csv",
        scale,
        config.random_weights,
        notes,
    )


def fitted_decoding(
    run_dir: Path, category: str, paths: list[Path], data: Any
) -> tuple[Decoding, list[str]]:
    """The category's decoding saved with its fitted model (its >8-bit intensity range, so
    an image maps as it did in the run, not by the range of the images given now), and a
    note naming the inputs outside that range (clipped to it). A run saved before the range
    was stored maps by the inputs' own range, and says so when any input has >8 bits."""
    from adcore.outputs.fitted import read_decoding

    stored = read_decoding(run_dir / category / "model.pt")
    found = {p: e for p in paths if (e := extrema(p, data.max_image_pixels)) is not None}
    if stored is None:
        decoding = category_decoding(paths, data.intensity_range, data.max_image_pixels)
        if not found:
            return decoding, []
        return decoding, [
            f"the run saved no intensity range with its model, so the {len(found)} images of "
            "more than 8 bits are mapped by their own range (scores may differ from the "
            "run's): rerun ad eval --save-model to store it"
        ]
    outside = []
    for path, (mode, low, high) in found.items():
        span = stored.float_range if mode in FLOAT_MODES else stored.integer_range
        if span is not None and (low < span[0] or high > span[1]):
            outside.append(f"{path.name} ({low:g}..{high:g}, fitted {span[0]:g}..{span[1]:g})")
    if not outside:
        return stored, []
    return stored, [
        f"{len(outside)} inputs fall outside the intensity range the model was fitted with "
        f"and are clipped to it: {', '.join(outside[:10])}{' ...' if len(outside) > 10 else ''}"
    ]


def screened_samples(
    images: list[tuple[Path, str]], category: str, max_image_pixels: int | None
) -> list[Sample]:
    """The inputs as samples, every unreadable one named at once before any map is written."""
    from adcore.run.preparation import screen_samples

    samples = [Sample(image_path=p, label=0, category=category) for p, _ in images]
    try:
        screen_samples(samples, False, False, max_image_pixels)
    except DataError as error:
        raise DataError(
            error.problem,
            "Fix, convert or remove those files and run ad predict again; it scores every "
            "image it is given.",
        ) from None
    return samples


def write_overlays(
    results: list[PredictedImage],
    verdicts: Verdicts,
    geometry: Any,
    settings: dict[str, Any],
    own_range: tuple[float, float],
    out_dir: Path,
    decoding: Decoding | None = None,
) -> None:
    """One overlay per image, on the saved colour scale and pixel threshold (``settings``:
    ``map_min``/``map_max``/``pixel_threshold``, ``pixel_label`` its origin) when there are
    any, else the maps' own."""
    from PIL import Image

    pixel = settings.get("pixel_threshold")
    if "map_min" in settings:
        value_range = (settings["map_min"], settings["map_max"])
    else:
        value_range = own_range if own_range[1] > own_range[0] else (own_range[0], own_range[0] + 1)
    # flat names, made unique again after flattening ("a/b" and "a_b" must not meet)
    names = unique_keys([safe_name(r.key.replace("/", "_")) for r in results])
    for result, flat in zip(results, names, strict=True):
        with Image.open(out_dir / "maps" / f"{result.key}.tiff") as stored:
            anomaly_map = np.asarray(stored, dtype=np.float32)  # [S,S]
        verdict = "anomalous" if result.anomalous else "normal"
        item = OverlayImage(
            image=read_at_geometry(result.path, geometry, decoding),
            anomaly_map=anomaly_map,
            mask=None,
            title=f"{verdicts.category} / {result.path.name}: predicted {verdict}",
            subtitle=f"score {result.score:.4g}, image threshold {verdicts.threshold:.4g}",
        )
        name = f"{flat}_{verdict}_score{result.score:.4g}.png"
        png = render_png(item, value_range, pixel, settings.get("pixel_label", "run's F1-optimal"))
        atomic_write_bytes(out_dir / "overlays" / name, png)

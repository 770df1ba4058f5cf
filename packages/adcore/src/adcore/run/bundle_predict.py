"""``ad predict --model BUNDLE``: score images with an exported bundle (ONNX Runtime), as
``ad predict --run`` does with the PyTorch method: the same decoding (with the bundle's
intensity range, not the inputs'), preprocessing, score scale and files."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

import numpy as np

from adcore.contracts.preprocessing import Preprocessing
from adcore.data.decoding import Decoding
from adcore.infra.errors import DataError, PluginError
from adcore.outputs.bundle import Bundle, read_bundle
from adcore.outputs.scorescale import ScoreScale
from adcore.run.predict import (
    PredictOutput,
    Verdicts,
    find_images,
    screened_samples,
    write_overlays,
    write_scores,
)


def bundle_decoding(bundle: Bundle) -> Decoding:
    """The category's decoding as the bundle recorded it (its bit-depth range, size limit)."""
    fields = {
        k: bundle.decoding.get(k) for k in ("max_image_pixels", "integer_range", "float_range")
    }
    return Decoding(
        max_image_pixels=fields["max_image_pixels"],
        integer_range=tuple(fields["integer_range"]) if fields["integer_range"] else None,
        float_range=tuple(fields["float_range"]) if fields["float_range"] else None,
    )


def bundle_session(folder: Path, bundle: Bundle) -> Any:
    """An ONNX Runtime session of the bundle's graph, checked against its recorded digest."""
    import onnxruntime

    graph = folder / bundle.graph
    if not graph.is_file():
        raise DataError(f"The bundle {folder} has no {bundle.graph}.", "Export the model again.")
    if hashlib.sha256(graph.read_bytes()).hexdigest() != bundle.graph_sha256:
        raise DataError(
            f"{graph} is not the graph the bundle describes (its SHA-256 differs from "
            "bundle.json's graph_sha256): the file is damaged or was replaced.",
            "Export the model again with ad export.",
        )
    if not bundle.parity.passed:
        raise DataError(
            f"The bundle {folder} failed its parity check at export (scores "
            f"{bundle.parity.score_max_rel:.3g} off the PyTorch method).",
            "Do not use it: fix the method's export_module and export again.",
        )
    return onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])


def predict_bundle(
    folder: Path,
    inputs: list[Path],
    out_dir: Path,
    threshold: float | None = None,
    overlays: bool = True,
    batch_size: int = 8,
) -> PredictOutput:
    """Score ``inputs`` with the bundle in ``folder``; write scores.csv, maps/, overlays/."""
    from adcore.data.loading import make_loader
    from adcore.outputs.mapfiles import write_map

    bundle = read_bundle(folder)
    session = bundle_session(folder, bundle)
    images = find_images(inputs)
    geometry = Preprocessing(**bundle.preprocessing)
    decoding = bundle_decoding(bundle)
    samples = screened_samples(images, bundle.category, decoding.max_image_pixels)
    scores = np.empty(len(samples), dtype=np.float64)
    low, high = math.inf, -math.inf
    for batch in make_loader(samples, geometry, batch_size, decoding=decoding):
        fed = geometry.normalize(batch["image"]).numpy()
        try:
            batch_scores, maps = session.run(["scores", "maps"], {"images": fed})
        except Exception as error:  # onnxruntime's own untyped errors
            raise PluginError(
                f"ONNX Runtime failed on the bundle {folder} ({str(error).splitlines()[0]}).",
                "Export the model again with this toolkit's ad export.",
            ) from error
        index = batch["index"].numpy()
        scores[index] = batch_scores
        low, high = min(low, float(maps.min())), max(high, float(maps.max()))
        for i, value in zip(index, maps, strict=True):
            write_map(out_dir / "maps" / f"{images[i][1]}.tiff", value)
    given = threshold is not None
    recorded = bundle.thresholds["image"]
    decision = threshold if given else recorded.value
    source = "given" if given else recorded.source
    anchors = bundle.score_scale
    scale = ScoreScale(min(anchors["low"], decision), decision, max(anchors["high"], decision))
    verdicts = Verdicts(bundle.category, decision, source, scale)
    results = write_scores(images, scores, verdicts, out_dir)
    if overlays:
        pixel = bundle.thresholds.get("pixel")
        settings = {} if pixel is None else {"pixel_threshold": pixel.value}
        write_overlays(results, verdicts, geometry, settings, (low, high), out_dir, decoding)
    return PredictOutput(bundle.category, decision, source, results, out_dir / "scores.csv", scale)

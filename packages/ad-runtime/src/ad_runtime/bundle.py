"""``bundle.json``: what an exported model needs to be fed and read, written by ``ad export``.

A bundle is a folder: the graph (``model.onnx``, or OpenVINO's IR ``model.xml`` with its
weights ``model.bin``) and this description. The graph maps
normalised float32 images ``[B,3,S,S]`` (RGB, NCHW, the batch axis free) to raw image
scores ``[B]`` and raw anomaly maps ``[B,S,S]``; no threshold and no score scale inside.
Everything else (how to decode and preprocess an image, how to read a score) is here.
``format_version`` grows when a reader would misread the bundle; a reader refuses newer
ones (version 2 added the OpenVINO IR, reduced precisions, ``inference_precision`` and
``graph_files``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ad_runtime.errors import DataError

BUNDLE_FORMAT_VERSION = 2
BUNDLE_FILE = "bundle.json"


class BundleTensor(BaseModel):
    """One graph input or output: name, dtype and shape (``batch`` for the free axis)."""

    name: str
    dtype: str = "float32"
    shape: list[int | str]


class Threshold(BaseModel):
    """A decision threshold on the raw scale and where it came from."""

    value: float
    source: str


class BundleParity(BaseModel):
    """The graph against the PyTorch method on the run's test images.

    ``*_max_rel``: the largest absolute difference divided by the largest absolute value
    of the PyTorch output (scores, maps); ``run_score_max_rel``: the same against the
    run's own ``scores.csv`` (computed at the run's precision). ``tolerance``: the fp32
    limit that ``passed`` checks; None for a reduced precision, whose deltas are reported,
    not limited (``passed`` then says the outputs are finite).
    """

    images: int
    score_max_rel: float
    map_max_rel: float
    run_score_max_rel: float
    auroc_torch: float | None
    auroc_bundle: float | None
    tolerance: float | None
    passed: bool


class Bundle(BaseModel):
    """The description of an exported model (``bundle.json``)."""

    model_config = ConfigDict(extra="forbid")

    format_version: int = BUNDLE_FORMAT_VERSION
    toolkit_version: str
    created: str  # ISO 8601, UTC
    format: str  # "onnx" (ONNX Runtime) or "openvino" (OpenVINO IR)
    precision: str  # fp32, fp16, bf16 (OpenVINO) or int8 (ONNX, dynamic quantisation)
    inference_precision: str = "fp32"  # the engine's precision hint the parity ran with
    graph: str  # file name inside the bundle
    graph_sha256: str
    graph_files: dict[str, str] = Field(default_factory=dict)  # further files: name -> SHA-256
    method: str
    method_config: dict[str, Any]
    category: str
    run: str  # the run folder it came from
    inputs: list[BundleTensor]
    outputs: list[BundleTensor]
    preprocessing: dict[str, Any]  # adcore.api.Preprocessing fields
    channel_order: str = "RGB"
    decoding: dict[str, Any]  # the category's decoding rule (bit-depth range, size limit)
    score_scale: dict[str, float]  # low, threshold, high: ad_runtime.scorescale
    thresholds: dict[str, Threshold] = Field(default_factory=dict)  # image, pixel
    weights: dict[str, Any]  # the weights identity of the run
    parity: BundleParity


def read_bundle(folder: Path) -> Bundle:
    """The description of the bundle in ``folder``; refuses missing, damaged or newer ones."""
    path = folder / BUNDLE_FILE
    if not path.is_file():
        raise DataError(
            f"{folder} is not a model bundle (it has no {BUNDLE_FILE}).",
            "Pass a folder written by ad export.",
        )
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(
            f"{path} cannot be read as JSON ({error}).", "Export the model again with ad export."
        ) from None
    version = data.get("format_version") if isinstance(data, dict) else None
    if isinstance(version, int) and version > BUNDLE_FORMAT_VERSION:
        raise DataError(
            f"The bundle {folder} has format version {version}; this toolkit reads versions "
            f"up to {BUNDLE_FORMAT_VERSION}.",
            "Upgrade the toolkit, or export the model again with this version.",
        )
    try:
        return Bundle.model_validate(data)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise DataError(
            f"{path} is not a valid bundle description ({where}: {first['msg']}).",
            "Export the model again with ad export.",
        ) from None

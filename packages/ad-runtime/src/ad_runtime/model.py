"""An exported bundle as a model: decode, preprocess, run the graph, read the scores.

``Model(folder).predict(paths)`` does, without torch, what ``ad predict --run`` does with
the fitted PyTorch method: the bundle's decoding (the category's intensity range, its size
limit), its preprocessing (:class:`~ad_runtime.preprocessing.Preprocessing`, the same code
the toolkit's loader runs), the graph (ONNX Runtime or OpenVINO, as the bundle's format
says), and the bundle's score scale and image threshold.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.bundle import Bundle, read_bundle
from ad_runtime.decoding import Decoding, read_image
from ad_runtime.errors import DataError, UsageError
from ad_runtime.mapfiles import write_map
from ad_runtime.predictions import Verdicts
from ad_runtime.preprocessing import Preprocessing
from ad_runtime.scorescale import ScoreScale
from ad_runtime.thresholds import calibrated_bundle


@dataclass
class Scored:
    """One image through the bundle: raw and normalised score, decision, raw map [S,S]."""

    path: Path
    score: float
    normalised: float
    anomalous: bool
    anomaly_map: np.ndarray


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


def bundle_verdicts(bundle: Bundle, threshold: float | None = None) -> Verdicts:
    """The image threshold (``threshold`` when given, else the bundle's) and score scale."""
    recorded = bundle.thresholds["image"]
    decision = recorded.value if threshold is None else threshold
    source = recorded.source if threshold is None else "given"
    anchors = bundle.score_scale
    scale = ScoreScale(min(anchors["low"], decision), decision, max(anchors["high"], decision))
    return Verdicts(bundle.category, decision, source, scale)


ENGINES = ("onnxruntime", "openvino")
OPENVINO_PRECISIONS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16"}
FORMAT_ENGINES = {"onnx": "onnxruntime", "openvino": "openvino"}  # the engine each runs on


def check_graph(folder: Path, bundle: Bundle) -> Path:
    """The bundle's graph file.

    Raises ``DataError`` when it (or a further file of it: the IR's weights) is missing,
    differs from the SHA-256 that ``bundle.json`` records (damaged or replaced), or failed
    its parity check at export.
    """
    graph = folder / bundle.graph
    for name, digest in {bundle.graph: bundle.graph_sha256, **bundle.graph_files}.items():
        path = folder / name
        if not path.is_file():
            raise DataError(f"The bundle {folder} has no {name}.", "Export the model again.")
        if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            raise DataError(
                f"{path} is not the file the bundle describes (its SHA-256 differs from "
                "bundle.json's): the file is damaged or was replaced.",
                "Export the model again with ad export.",
            )
    if not bundle.parity.passed:
        raise DataError(
            f"The bundle {folder} failed its parity check at export (scores "
            f"{bundle.parity.score_max_rel:.3g} off the PyTorch method).",
            "Do not use it: fix the method's export_module and export again.",
        )
    return graph


class OpenVinoSession:
    """The graph (ONNX or OpenVINO IR) compiled by OpenVINO for the CPU, called as an ONNX
    Runtime session is (``run(output_names, {input_name: array})``); ``precision`` is its
    inference precision hint (matrix products and convolutions in bf16 or fp16 where the CPU
    has them; fp32 is asked for explicitly, as OpenVINO would pick bf16 on AMX CPUs)."""

    def __init__(self, graph: Path, precision: str) -> None:
        try:
            import openvino
        except ImportError:
            raise UsageError(
                "The openvino engine needs OpenVINO, which is not installed.",
                "Install it with: python -m pip install 'ad-runtime[openvino]'.",
            ) from None
        core = openvino.Core()
        capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
        if precision != "fp32" and precision.upper() not in capabilities:
            raise UsageError(
                f"This CPU has no {precision} support in OpenVINO (it offers "
                f"{', '.join(capabilities)}).",
                "Use --precision fp32, or a CPU with it (bf16: AVX-512 BF16 or AMX).",
            )
        hint = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision]}
        try:
            self.compiled = core.compile_model(str(graph), "CPU", hint)
        except RuntimeError as error:  # OpenVINO's reader and compiler raise RuntimeError
            raise DataError(
                f"OpenVINO cannot read or compile {graph} ({_first_line(error)}).",
                "Export the model again with ad export.",
            ) from error

    def run(self, names: list[str], fed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs ``names`` for the inputs ``fed``."""
        result = self.compiled(fed)
        return [result[self.compiled.output(name)] for name in names]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0][:300] if text else type(error).__name__


def engine_session(
    graph: Path, engine: str, precision: str = "fp32", providers: Sequence[str] | None = None
) -> Any:
    """A session of the graph file as it is (no check against a bundle): ONNX Runtime
    (``providers`` default the CPU) or :class:`OpenVinoSession` with ``precision``'s hint.
    ``ad export`` runs its parity check through this, so it measures what the runtime runs.

    Raises ``DataError`` when the engine cannot read the file."""
    if engine == "openvino":
        return OpenVinoSession(graph, precision)
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(
            str(graph), providers=list(providers or ["CPUExecutionProvider"])
        )
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise DataError(
            f"ONNX Runtime cannot read {graph} ({_first_line(error)}).",
            "Export the model again with ad export.",
        ) from error


def open_session(
    folder: Path,
    bundle: Bundle,
    providers: Sequence[str] | None = None,
    engine: str | None = None,
    precision: str | None = None,
) -> Any:
    """A session of the bundle's checked graph (:func:`check_graph`) on ``engine`` (default:
    the bundle's format's, :data:`FORMAT_ENGINES`): ONNX Runtime (``providers`` default the
    CPU) or OpenVINO (:class:`OpenVinoSession`, fp32/bf16/fp16; default the bundle's
    ``inference_precision``).

    Raises ``UsageError`` for an unknown engine, one that cannot read the bundle's format, or
    a precision it cannot run."""
    engine = engine or FORMAT_ENGINES.get(bundle.format, "onnxruntime")
    precision = precision or (bundle.inference_precision if engine == "openvino" else "fp32")
    if engine not in ENGINES:
        raise UsageError(f"Unknown engine {engine!r}.", f"Use one of {', '.join(ENGINES)}.")
    if engine == "onnxruntime" and bundle.format == "openvino":
        raise UsageError(
            f"The bundle {folder} is an OpenVINO IR, which ONNX Runtime cannot read.",
            "Run it with --engine openvino (pip install 'ad-runtime[openvino]'), or export "
            "with --format onnx for ONNX Runtime.",
        )
    if precision not in OPENVINO_PRECISIONS or (engine == "onnxruntime" and precision != "fp32"):
        raise UsageError(
            f"The {engine} engine does not run precision {precision!r}.",
            "ONNX Runtime runs the graph as exported (fp32, or int8 from ad export --precision "
            "int8); OpenVINO runs fp32, bf16 or fp16 (--engine openvino).",
        )
    return engine_session(check_graph(folder, bundle), engine, precision, providers)


class Model:
    """A bundle folder written by ``ad export``, ready to score image files.

    ``threshold``: the image threshold on the raw scale (default: the bundle's, with its
    source); ``providers``: ONNX Runtime execution providers (default: the CPU);
    ``engine``: ``onnxruntime`` or ``openvino`` (the ``openvino`` extra; default: the one
    the bundle's format runs on), ``precision``: OpenVINO's inference precision, ``fp32``,
    ``bf16`` or ``fp16`` (default: the bundle's); ``calibrated``: the thresholds of the
    folder's ``threshold.json`` (``ad calibrate``) replace the bundle's when there is one.
    Raises ``DataError`` for a missing, damaged, newer or failed bundle or a threshold.json
    of another model, ``UsageError`` for an engine or precision it cannot run (or OpenVINO
    not installed, naming the extra).
    """

    def __init__(
        self,
        folder: Path | str,
        threshold: float | None = None,
        providers: Sequence[str] | None = None,
        engine: str | None = None,
        precision: str | None = None,
        calibrated: bool = True,
    ) -> None:
        self.folder = Path(folder).expanduser()
        self.bundle = read_bundle(self.folder)
        if calibrated:
            self.bundle = calibrated_bundle(self.bundle, self.folder)
        self.session = open_session(self.folder, self.bundle, providers, engine, precision)
        self.preprocessing = Preprocessing(**self.bundle.preprocessing)
        self.decoding = bundle_decoding(self.bundle)
        self.verdicts = bundle_verdicts(self.bundle, threshold)

    def pixels(self, path: Path) -> np.ndarray:
        """One image file -> uint8 [S,S,3], decoded and preprocessed as the toolkit does."""
        return self.preprocessing.apply(read_image(path, self.decoding))

    def run(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 [B,S,S,3] -> (raw scores float64 [B], raw maps float32 [B,S,S]).

        Raises ``DataError`` when the engine refuses the graph or the batch."""
        fed = {self.bundle.inputs[0].name: self.preprocessing.normalize_array(pixels)}
        names = [tensor.name for tensor in self.bundle.outputs]
        try:
            scores, maps = self.session.run(names, fed)
        except Exception as error:  # onnxruntime's own untyped errors
            raise DataError(
                f"The engine failed on the bundle {self.folder} ({_first_line(error)}).",
                "Export the model again with this toolkit's ad export.",
            ) from error
        return np.asarray(scores, dtype=np.float64), np.asarray(maps, dtype=np.float32)

    def batches(
        self, paths: Sequence[Path], batch_size: int = 8
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray]]:
        """(positions in ``paths``, raw scores [b], raw maps [b,S,S]) batch by batch: memory
        bounded by ``batch_size`` whatever the number of images."""
        for start in range(0, len(paths), batch_size):
            part = range(start, min(start + batch_size, len(paths)))
            scores, maps = self.run(np.stack([self.pixels(Path(paths[i])) for i in part]))
            yield part, scores, maps

    def score_files(
        self,
        images: Sequence[tuple[Path, str]],
        out_dir: Path,
        batch_size: int = 8,
        maps: bool = True,
        advance: Callable[[int], None] | None = None,
    ) -> tuple[np.ndarray, tuple[float, float]]:
        """Raw scores [N] of ``images`` ((path, output key), as ``find_images`` gives) and
        the maps' (lowest, highest) value; each map written to ``out_dir/maps/<key>.tiff``
        when ``maps``. ``advance(done)`` is called after each batch (a progress display)."""
        scores = np.empty(len(images), dtype=np.float64)
        low, high = math.inf, -math.inf
        for part, batch_scores, batch_maps in self.batches([p for p, _ in images], batch_size):
            scores[part.start : part.stop] = batch_scores
            low, high = min(low, float(batch_maps.min())), max(high, float(batch_maps.max()))
            for i, value in zip(part, batch_maps, strict=True) if maps else ():
                write_map(out_dir / "maps" / f"{images[i][1]}.tiff", value)
            if advance is not None:
                advance(part.stop)
        return scores, (low, high)

    def predict(self, paths: Sequence[Path | str], batch_size: int = 8) -> list[Scored]:
        """Score image files [N] -> one :class:`Scored` each (maps kept: for many images
        use :meth:`batches`)."""
        files = [Path(p) for p in paths]
        scored: list[Scored] = []
        for part, scores, maps in self.batches(files, batch_size):
            normalised = self.verdicts.scale.normalise(scores)
            for i, score, norm, anomaly_map in zip(part, scores, normalised, maps, strict=True):
                decision = bool(score >= self.verdicts.threshold)
                scored.append(Scored(files[i], float(score), float(norm), decision, anomaly_map))
        return scored

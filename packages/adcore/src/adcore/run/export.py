"""``ad export``: a run's fitted method as an ONNX or OpenVINO bundle, checked against PyTorch.

The method is rebuilt from the run exactly as ``ad predict`` rebuilds it (in fp32), its
:meth:`~adcore.contracts.method.ExportableMethod.export_module` is exported with
``torch.onnx.export`` (the ``torch.export`` path, batch axis free), and the graph is made
into the asked format and precision (:data:`FORMATS`):

- ``onnx`` ``fp32``: that graph, for ONNX Runtime; ``int8``: ONNX Runtime's dynamic
  quantisation of it (``quantize_dynamic``: int8 weights, activations quantised per call);
- ``openvino``: OpenVINO's IR converted from that graph (``convert_model``, ``save_model``);
  ``fp32`` computed in fp32, ``bf16`` with OpenVINO's bf16 inference hint (fp32 weights),
  ``fp16`` with its weights stored in fp16 (``compress_to_fp16``) and the fp16 hint.

The bundle is then run, through the runtime's own session (:func:`ad_runtime.model.
engine_session`), on the run's test images beside the PyTorch method (fp32) on the same
preprocessed batches. The figures go into ``bundle.json`` (:class:`ad_runtime.bundle.Bundle`);
an fp32 bundle that differs by more than ``FP32_PARITY`` (relative to the largest output) is
refused, with the figures; a reduced precision's deltas are recorded and printed.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.bundle import BUNDLE_FILE, Bundle, BundleParity, BundleTensor, Threshold
from ad_runtime.decoding import Decoding
from adcore.contracts.dataset import Sample
from adcore.contracts.method import ExportableMethod, Method
from adcore.infra.errors import OutputError, PluginError, UsageError
from adcore.infra.files import atomic_write_text
from adcore.infra.progress import Progress

FP32_PARITY = 1e-4  # largest |bundle - torch| / largest |torch|, scores and maps
GRAPH_FILE = "model.onnx"
IR_FILE = "model.xml"  # OpenVINO's IR; its weights beside it in model.bin
OPSET = 18
# the precisions each format exports, and the engine hint each runs with
FORMATS = {"onnx": ("fp32", "int8"), "openvino": ("fp32", "bf16", "fp16")}
PRECISIONS = ("fp32", "fp16", "bf16", "int8")


@dataclass
class ExportReport:
    """What ``export_run`` wrote and measured."""

    folder: Path
    bundle: Bundle


@dataclass
class _Outputs:
    """Scores [N] and maps [N,S,S] of the same images from PyTorch and from the graph."""

    torch_scores: np.ndarray
    torch_maps: np.ndarray
    graph_scores: np.ndarray
    graph_maps: np.ndarray


def export_run(
    run_dir: Path,
    output: Path,
    category: str | None = None,
    parity_images: int | None = None,
    progress: Progress | None = None,
    export_format: str = "onnx",
    precision: str = "fp32",
) -> ExportReport:
    """Export ``category`` of the run ``run_dir`` into the bundle folder ``output`` as
    ``export_format`` (``onnx``, ``openvino``) in ``precision`` (:data:`FORMATS`).

    ``parity_images``: how many of the run's test images the parity check runs (all when
    None). Raises ``UsageError`` for a method that does not export or a format/precision
    pair that is not made (:func:`check_format`), ``PluginError`` when torch cannot export
    its module or an fp32 bundle fails the parity check (the bundle is written either way,
    its ``parity.passed`` says which).
    """
    from adcore.run.predict import fitted_decoding, load_method, pick_category, run_test_scores

    check_format(export_format, precision)
    check_bundle_folder(output)
    progress = progress or Progress(enabled=False)
    category = pick_category(run_dir, category)
    config, method, _ = load_method(run_dir, category, "cpu", precision="fp32")
    name = config.method.spec.name
    _check_exportable(method, name, config.method.spec.not_exportable)
    output.mkdir(parents=True, exist_ok=True)
    for old in (BUNDLE_FILE, GRAPH_FILE, IR_FILE, Path(IR_FILE).with_suffix(".bin").name):
        (output / old).unlink(missing_ok=True)  # a bundle holds one graph, described once
    progress.note(f"export: {name} / {category} -> {output} ({export_format}, {precision})")
    graph = _write_bundle_graph(method, name, output, export_format, precision)
    hint = precision if export_format == "openvino" else "fp32"
    samples = _run_samples(run_dir, category, parity_images)
    # the intensity range the category was fitted with (the run's, not the parity images')
    decoding, _ = fitted_decoding(
        run_dir, category, [s.image_path for s in samples], config.base.data
    )
    session = _session(graph, export_format, hint)
    outputs = _parity_outputs(
        method, samples, session, graph, config.base.data.batch_size, decoding, progress
    )
    run_scores, labels = run_test_scores(run_dir, category)
    parity = _parity(outputs, run_scores[: len(samples)], labels[: len(samples)], precision)
    bundle = _describe(run_dir, category, config, method, graph, parity)
    bundle.format, bundle.precision, bundle.inference_precision = export_format, precision, hint
    bundle.graph_files = {
        path.name: _sha256(path)
        for path in [graph.with_suffix(".bin")]
        if export_format == "openvino"
    }
    bundle.decoding = {
        "intensity_range": config.base.data.intensity_range,
        **dataclasses.asdict(decoding),
    }
    atomic_write_text(output / BUNDLE_FILE, bundle.model_dump_json(indent=2) + "\n")
    _refuse_failed(parity, name, precision, output)
    return ExportReport(output, bundle)


def _refuse_failed(parity: BundleParity, name: str, precision: str, output: Path) -> None:
    """``PluginError`` with the figures when the bundle failed its parity check."""
    if not parity.passed and parity.tolerance is None:
        raise PluginError(
            f"The exported {name} graph in {precision} gives non-finite scores or maps on "
            f"the run's test images. The bundle in {output} records it and must not be used.",
            f"Export in fp32, or in another precision ({', '.join(FORMATS['openvino'])} with "
            "--format openvino).",
        )
    if not parity.passed:
        raise PluginError(
            f"The exported {name} graph differs from the PyTorch method: scores by "
            f"{parity.score_max_rel:.3g} and maps by {parity.map_max_rel:.3g} (relative to "
            f"the largest output; the limit is {FP32_PARITY:g}) on {parity.images} images. "
            f"The bundle in {output} records it and must not be used.",
            f"Make {name}'s export_module compute what predict computes (adcore.testing."
            "check_method compares them).",
        )


def check_bundle_folder(output: Path) -> None:
    """Refuses (``OutputError``) an ``--output`` that is a file, or a folder holding files
    but no bundle (another command's outputs, which the bundle would be mixed into)."""
    if output.exists() and not output.is_dir():
        raise OutputError(f"--output {output} is a file.", "Give a folder for the bundle.")
    if output.is_dir() and not (output / BUNDLE_FILE).exists() and any(output.iterdir()):
        raise OutputError(
            f"--output {output} holds files but no bundle ({BUNDLE_FILE}): the bundle would "
            "be mixed into another command's outputs.",
            "Give an empty or new folder, or the folder of an earlier export to replace it.",
        )


def _check_exportable(method: Method, name: str, reason: str) -> None:
    """Raise ``UsageError`` (with the record's ``not_exportable`` reason) unless it exports."""
    if isinstance(method, ExportableMethod):
        return
    reason = reason or (
        "it does not provide export_module (its record does not declare the "
        "'exportable' capability)"
    )
    raise UsageError(
        f"The method {name!r} does not export: {reason}.",
        "Export a method that ad list-plugins lists as exportable, or use ad predict "
        "--run with this run.",
    )


def check_format(export_format: str, precision: str) -> None:
    """Raise ``UsageError`` (one paragraph naming what works) unless ``ad export`` makes
    ``export_format`` in ``precision``."""
    if export_format not in FORMATS:
        raise UsageError(
            f"Unknown export format {export_format!r}.",
            "Use --format onnx (ONNX Runtime) or --format openvino (OpenVINO IR).",
        )
    if precision not in PRECISIONS:
        raise UsageError(
            f"Unknown precision {precision!r}.", f"Use one of {', '.join(PRECISIONS)}."
        )
    if precision in FORMATS[export_format]:
        return
    if export_format == "onnx":
        raise UsageError(
            f"ad export writes ONNX graphs in fp32 or int8, not {precision}: ONNX Runtime's "
            f"CPU execution provider has few {precision} kernels, so such a graph would run "
            "mostly through casts.",
            f"Use --format openvino --precision {precision} (OpenVINO computes in {precision} "
            "on CPUs with it), or --format onnx with --precision fp32 or int8.",
        )
    raise UsageError(
        "ad export does not make int8 OpenVINO IRs: that needs NNCF's quantisation, which "
        "this toolkit does not install.",
        "Use --format onnx --precision int8 (ONNX Runtime's dynamic quantisation), or "
        "--format openvino with --precision fp32, bf16 or fp16.",
    )


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_bundle_graph(
    method: ExportableMethod, name: str, output: Path, export_format: str, precision: str
) -> Path:
    """The graph file of the bundle in ``output`` in ``export_format`` and ``precision``."""
    if export_format == "onnx" and precision == "fp32":
        _write_graph(method, name, output / GRAPH_FILE)
        return output / GRAPH_FILE
    with tempfile.TemporaryDirectory(dir=output, prefix=".export-") as work:
        fp32 = Path(work) / GRAPH_FILE
        _write_graph(method, name, fp32)
        if export_format == "onnx":
            return _quantized(fp32, output / GRAPH_FILE)
        return _openvino_ir(fp32, output / IR_FILE, compress_to_fp16=precision == "fp16")


def _quantized(fp32: Path, graph: Path) -> Path:
    """ONNX Runtime's dynamic quantisation of ``fp32`` at ``graph``: int8 weights of matrix
    products and convolutions, their inputs quantised per call from their observed range."""
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = fp32.with_suffix(".prepared.onnx")
    quant_pre_process(str(fp32), str(prepared))  # shapes inferred, graph folded, as ORT advises
    quantize_dynamic(str(prepared), str(graph), weight_type=QuantType.QUInt8)
    return graph


def _openvino_ir(onnx: Path, xml: Path, compress_to_fp16: bool) -> Path:
    """OpenVINO's IR (``xml`` and its ``.bin``) converted from the ONNX graph ``onnx``."""
    try:
        import openvino
    except ImportError:
        raise OutputError(
            "--format openvino needs OpenVINO, which is not installed.",
            "Install it: pip install -e 'packages/adcore[export]' (or pip install openvino).",
        ) from None
    try:
        model = openvino.convert_model(str(onnx))
        openvino.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    except Exception as error:  # OpenVINO's converter raises its own error types
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise PluginError(
            f"OpenVINO could not convert the exported graph ({type(error).__name__}: {first}).",
            "Export with --format onnx (ONNX Runtime runs it), or compute the method's "
            "export_module with operations OpenVINO supports (AD_DEBUG=1 shows the trace).",
        ) from error
    return xml


def _session(graph: Path, export_format: str, hint: str) -> Any:
    """The runtime's session of ``graph``; its failure to read it as ``PluginError``."""
    from ad_runtime.errors import AdError
    from ad_runtime.model import FORMAT_ENGINES, engine_session

    try:
        return engine_session(graph, FORMAT_ENGINES[export_format], hint)
    except AdError as error:
        if isinstance(error, UsageError):
            raise
        raise _runtime_error(error, graph) from error


def _write_graph(method: ExportableMethod, name: str, graph: Path) -> None:
    """``export_module`` -> ONNX at ``graph``; torch's failures as one paragraph."""
    import torch

    from adcore.infra.captured import captured_output

    module = method.export_module().eval()
    side = method.geometry.output_size
    example = torch.zeros(2, 3, side, side)
    batch = torch.export.Dim("batch", min=1)
    messages: list[str] = []
    try:
        with torch.no_grad(), captured_output(messages):
            module(example)  # eagerly first: a cache the module fills must hold real tensors
            torch.onnx.export(
                module,
                (example,),
                str(graph),
                input_names=["images"],
                output_names=["scores", "maps"],
                dynamic_shapes=({0: batch},),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
            )
    except ImportError as error:
        raise OutputError(
            f"ONNX export needs the onnx and onnxscript packages ({error}).",
            "Install them: pip install -e 'packages/adcore[export]'.",
        ) from None
    except Exception as error:  # torch.export's and the exporter's many error types
        first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise PluginError(
            f"torch could not export the module of {name} ({type(error).__name__}: {first}).",
            f"Make {name}'s export_module traceable by torch.export (tensor operations only, "
            "no faiss or numpy, the batch size free); AD_DEBUG=1 shows torch's trace.",
        ) from error


def _run_samples(run_dir: Path, category: str, limit: int | None) -> list[Sample]:
    """The run's test images of ``category`` (its ``scores.csv`` rows), the first ``limit``."""
    import csv

    with (run_dir / category / "scores.csv").open(newline="") as stream:
        rows = list(csv.DictReader(stream))
    rows = rows[:limit] if limit is not None else rows
    missing = [row["path"] for row in rows if not Path(row["path"]).is_file()]
    if missing:
        raise UsageError(
            f"The parity check needs the run's test images, and {len(missing)} of them are "
            f"gone (first: {missing[0]}).",
            "Run ad export where the run's data set is, or restore those files.",
        )
    return [
        Sample(image_path=Path(r["path"]), label=int(r["label"]), category=category) for r in rows
    ]


def _parity_outputs(
    method: Method,
    samples: list[Sample],
    session: Any,
    graph: Path,
    batch_size: int,
    decoding: Decoding,
    progress: Progress,
) -> _Outputs:
    """The same preprocessed batches through ``method.predict`` and the bundle's session."""
    import torch

    from adcore.data.loading import make_loader

    loader = make_loader(samples, method.geometry, batch_size, decoding=decoding)
    parts: list[tuple[np.ndarray, ...]] = []
    with progress.task("parity", len(samples)) as advance, torch.no_grad():
        for batch in loader:
            images = batch["image"]
            prediction = method.predict(images)
            fed = method.geometry.normalize(images).numpy()
            try:
                scores, maps = session.run(["scores", "maps"], {"images": fed})
            except Exception as error:  # the engines' own untyped errors
                raise _runtime_error(error, graph) from error
            parts.append(
                (prediction.scores.float().numpy(), prediction.maps.float().numpy(), scores, maps)
            )
            advance(len(images))
    return _Outputs(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def _runtime_error(error: Exception, graph: Path) -> PluginError:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return PluginError(
        f"The inference engine cannot run the exported graph {graph} ({first}).",
        "An operator or data type of the method's export_module has no kernel there: "
        "compute it with other operations, or export another format (AD_DEBUG=1 shows "
        "the trace).",
    )


def max_relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest |ours - reference| over the largest |reference| (0 for two zero arrays)."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    delta = float(np.max(np.abs(ours.astype(np.float64) - reference))) if reference.size else 0.0
    return delta / scale if scale > 0 else delta


def _parity(
    outputs: _Outputs, run_scores: np.ndarray, labels: np.ndarray, precision: str = "fp32"
) -> BundleParity:
    """The figures; ``passed``: within :data:`FP32_PARITY` for fp32, finite otherwise."""
    from adcore.metrics import image_auroc

    both = 0 < int(labels.sum()) < len(labels)
    score_rel = max_relative_difference(outputs.graph_scores, outputs.torch_scores)
    map_rel = max_relative_difference(outputs.graph_maps, outputs.torch_maps)
    return BundleParity(
        images=len(labels),
        score_max_rel=score_rel,
        map_max_rel=map_rel,
        run_score_max_rel=max_relative_difference(outputs.graph_scores, run_scores),
        auroc_torch=image_auroc(outputs.torch_scores, labels) if both else None,
        auroc_bundle=image_auroc(outputs.graph_scores, labels) if both else None,
        tolerance=FP32_PARITY if precision == "fp32" else None,
        passed=score_rel <= FP32_PARITY and map_rel <= FP32_PARITY
        if precision == "fp32"
        else bool(np.isfinite(score_rel) and np.isfinite(map_rel)),
    )


def _describe(
    run_dir: Path,
    category: str,
    config: Any,
    method: Method,
    graph: Path,
    parity: BundleParity,
) -> Bundle:
    """``bundle.json``'s record: inputs, outputs, preprocessing, decoding, scale, weights."""
    import adcore
    from ad_runtime.scorescale import ScoreScale
    from adcore.run.predict import run_decision, run_map_settings, run_test_scores

    side = method.geometry.output_size
    # the category's threshold.json (ad calibrate) when there is one, else F1 on the test set
    threshold, source, calibrated_pixel = run_decision(run_dir, category, config)
    scale = ScoreScale.from_scores(run_test_scores(run_dir, category)[0], threshold)
    thresholds = {"image": Threshold(value=threshold, source=source)}
    pixel = run_map_settings(run_dir, category).get("pixel_threshold")
    if calibrated_pixel is not None:
        thresholds["pixel"] = calibrated_pixel
    elif pixel is not None:
        thresholds["pixel"] = Threshold(value=float(pixel), source="the run's overlays")
    return Bundle(
        toolkit_version=adcore.__version__,
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        format="onnx",
        precision="fp32",
        graph=graph.name,
        graph_sha256=_sha256(graph),
        method=config.method.spec.name,
        method_config=config.method_config.model_dump(mode="json"),
        category=category,
        run=str(run_dir.resolve()),
        inputs=[BundleTensor(name="images", shape=["batch", 3, side, side])],
        outputs=[
            BundleTensor(name="scores", shape=["batch"]),
            BundleTensor(name="maps", shape=["batch", side, side]),
        ],
        preprocessing=method.geometry.model_dump(mode="json"),
        decoding={},
        score_scale={"low": scale.low, "threshold": scale.threshold, "high": scale.high},
        thresholds=thresholds,
        weights=method.weights_identity(),
        parity=parity,
    )

"""``ad export``: a run's fitted method as an ONNX bundle, checked against PyTorch.

The method is rebuilt from the run exactly as ``ad predict`` rebuilds it (in fp32), its
:meth:`~adcore.contracts.method.ExportableMethod.export_module` is exported with
``torch.onnx.export`` (the ``torch.export`` path, batch axis free), and the graph is run
with ONNX Runtime on the run's test images beside the PyTorch method on the same
preprocessed batches. The figures go into ``bundle.json``
(:class:`ad_runtime.bundle.Bundle`); an fp32 graph that differs by more than
``FP32_PARITY`` (relative to the largest output) is refused, with the figures.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.bundle import BUNDLE_FILE, Bundle, BundleParity, BundleTensor, Threshold
from ad_runtime.decoding import Decoding, category_decoding
from adcore.contracts.dataset import Sample
from adcore.contracts.method import ExportableMethod, Method
from adcore.infra.errors import OutputError, PluginError, UsageError
from adcore.infra.files import atomic_write_text
from adcore.infra.progress import Progress

FP32_PARITY = 1e-4  # largest |onnx - torch| / largest |torch|, scores and maps
GRAPH_FILE = "model.onnx"
OPSET = 18


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
) -> ExportReport:
    """Export ``category`` of the run ``run_dir`` into the bundle folder ``output``.

    ``parity_images``: how many of the run's test images the parity check runs (all when
    None). Raises ``UsageError`` for a method that does not export, ``PluginError`` when
    torch cannot export its module or the fp32 graph fails the parity check (the bundle
    is written either way, its ``parity.passed`` says which).
    """
    from adcore.run.predict import load_method, pick_category, run_test_scores

    progress = progress or Progress(enabled=False)
    category = pick_category(run_dir, category)
    config, method, _ = load_method(run_dir, category, "cpu", precision="fp32")
    name = config.method.spec.name
    _check_exportable(method, name, config.method.spec.not_exportable)
    output.mkdir(parents=True, exist_ok=True)
    graph = output / GRAPH_FILE
    progress.note(f"export: {name} / {category} -> {graph}")
    _write_graph(method, name, graph)
    samples = _run_samples(run_dir, category, parity_images)
    decoding = category_decoding(
        [s.image_path for s in samples],
        config.base.data.intensity_range,
        config.base.data.max_image_pixels,
    )
    outputs = _parity_outputs(
        method, samples, graph, config.base.data.batch_size, decoding, progress
    )
    run_scores, labels = run_test_scores(run_dir, category)
    parity = _parity(outputs, run_scores[: len(samples)], labels[: len(samples)])
    bundle = _describe(run_dir, category, config, method, graph, parity)
    bundle.decoding = {
        "intensity_range": config.base.data.intensity_range,
        **dataclasses.asdict(decoding),
    }
    atomic_write_text(output / BUNDLE_FILE, bundle.model_dump_json(indent=2) + "\n")
    if not parity.passed:
        raise PluginError(
            f"The exported {name} graph differs from the PyTorch method: scores by "
            f"{parity.score_max_rel:.3g} and maps by {parity.map_max_rel:.3g} (relative to "
            f"the largest output; the limit is {FP32_PARITY:g}) on {parity.images} images. "
            f"The bundle in {output} records it and must not be used.",
            f"Make {name}'s export_module compute what predict computes (adcore.testing."
            "check_method compares them).",
        )
    return ExportReport(output, bundle)


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
    graph: Path,
    batch_size: int,
    decoding: Decoding,
    progress: Progress,
) -> _Outputs:
    """The same preprocessed batches through ``method.predict`` and the ONNX graph."""
    import onnxruntime
    import torch

    from adcore.data.loading import make_loader

    loader = make_loader(samples, method.geometry, batch_size, decoding=decoding)
    try:
        session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
    except Exception as error:  # onnxruntime raises its own untyped errors
        raise _runtime_error(error, graph) from error
    parts: list[tuple[np.ndarray, ...]] = []
    with progress.task("parity", len(samples)) as advance, torch.no_grad():
        for batch in loader:
            images = batch["image"]
            prediction = method.predict(images)
            fed = method.geometry.normalize(images).numpy()
            try:
                scores, maps = session.run(["scores", "maps"], {"images": fed})
            except Exception as error:
                raise _runtime_error(error, graph) from error
            parts.append(
                (prediction.scores.float().numpy(), prediction.maps.float().numpy(), scores, maps)
            )
            advance(len(images))
    return _Outputs(*(np.concatenate([p[i] for p in parts]) for i in range(4)))


def _runtime_error(error: Exception, graph: Path) -> PluginError:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else type(error).__name__
    return PluginError(
        f"ONNX Runtime cannot run the exported graph {graph} ({first}).",
        "An operator or data type of the method's export_module has no ONNX Runtime kernel: "
        "compute it with other operations (AD_DEBUG=1 shows the trace).",
    )


def max_relative_difference(ours: np.ndarray, reference: np.ndarray) -> float:
    """Largest |ours - reference| over the largest |reference| (0 for two zero arrays)."""
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    delta = float(np.max(np.abs(ours.astype(np.float64) - reference))) if reference.size else 0.0
    return delta / scale if scale > 0 else delta


def _parity(outputs: _Outputs, run_scores: np.ndarray, labels: np.ndarray) -> BundleParity:
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
        tolerance=FP32_PARITY,
        passed=score_rel <= FP32_PARITY and map_rel <= FP32_PARITY,
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
        graph_sha256=hashlib.sha256(graph.read_bytes()).hexdigest(),
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

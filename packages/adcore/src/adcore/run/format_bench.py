"""``ad bench --model`` and ``ad bench --run --formats``: an exported model measured like a method.

Each (format, precision) row is measured in a fresh interpreter (a ``spawn`` process), so
its peak memory is what a process serving that model alone needs: a bundle's row imports
the torch-free runtime and its engine only, the ``torch`` row PyTorch and the plugin. The
figures follow :mod:`adcore.run.efficiency`'s conventions:

- latency: median wall time of one call on a batch of 1 (after warm-up), throughput: images
  per second at ``throughput_batch``, on seeded synthetic uint8 images at the model's input
  size; a bundle's call is :meth:`ad_runtime.model.Model.run` (normalisation and graph), the
  ``torch`` row's ``method.predict`` under the run's autocast (what ``ad eval`` times);
- peak memory: the process's peak resident set from before the model is loaded to the end
  of the timed calls (:class:`~adcore.run.efficiency.PeakMemory`), in MiB;
- file size: the bundle's graph files; for ``torch``, the fitted state (``model.pt``) plus
  the method's parameters at their stored width (the weights file it loads);
- image AUROC: the model's raw scores on the data set's test images (decoded as the bundle,
  or the run, says).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel

from adcore.infra.errors import AdError, UsageError

FORMAT_NAMES = ("torch", "onnx", "openvino")
TORCH_PRECISIONS = ("fp32", "bf16", "fp16")  # model.precision (autocast of the backbones)
OK, PARITY_FAILED, FAILED = "ok", "exported but parity failed", "failed"


class FormatRow(BaseModel):
    """One row of the format table; the figures are None where the row has none."""

    format: str
    precision: str
    status: str  # ok, exported but parity failed, failed
    reason: str = ""
    bundle: str = ""  # the bundle folder (empty for torch)
    file_mb: float | None = None
    auroc: float | None = None
    images: int = 0  # test images the AUROC is over
    latency_ms: float | None = None  # batch 1, median
    throughput_ips: float | None = None  # at FormatReport.throughput_batch
    peak_memory_mb: float | None = None
    peak_memory_source: str = ""


class FormatReport(BaseModel):
    """The table and what it was measured on."""

    method: str
    category: str
    rows: list[FormatRow]
    throughput_batch: int
    warmup_iters: int
    measure_iters: int
    machine: dict[str, Any]
    load_warning: str = ""
    random_weights: bool = False


def _measured(make: Any, batch: int, warmup: int, iters: int, score: Any) -> dict[str, Any]:
    """Figures of ``call = make()`` (a batch of ``b`` synthetic images -> outputs): latency at
    batch 1, throughput at ``batch``, peak memory (from before ``make``), then ``score()``."""
    from adcore.run.efficiency import PeakMemory, time_calls

    with PeakMemory("cpu") as memory:
        call = make()
        latency = time_calls(lambda: call(1), "cpu", warmup, iters)
        throughput_iters = max(1, iters // 4)
        batches = time_calls(lambda: call(batch), "cpu", max(1, warmup // 5), throughput_iters)
        peak, _ = memory.read()
    return {
        "latency_ms": float(np.median(latency) * 1e3),
        "throughput_ips": batch * throughput_iters / float(batches.sum()),
        "peak_memory_mb": peak,
        "peak_memory_source": memory.source,
        "scores": score(call),
    }


def _bundle_figures(
    folder: str, paths: list[str], batch: int, warmup: int, iters: int
) -> dict[str, Any]:
    """In a fresh process: the bundle's figures and its raw scores of ``paths`` [N]."""
    from ad_runtime.model import Model

    holder: dict[str, Model] = {}

    def make() -> Any:
        model = holder.setdefault("model", Model(folder))
        side = model.bundle.inputs[0].shape[-1]
        rng = np.random.default_rng(0)
        images = {b: rng.integers(0, 256, (b, side, side, 3), dtype=np.uint8) for b in (1, batch)}
        return lambda b: model.run(images[b])

    def score(_: Any) -> list[float]:
        batches = holder["model"].batches([Path(p) for p in paths], batch)
        return [float(s) for _, scores, _ in batches for s in scores]

    return _measured(make, batch, warmup, iters, score)


def _torch_figures(
    run: str, category: str, precision: str, paths: list[str], batch: int, warmup: int, iters: int
) -> dict[str, Any]:
    """In a fresh process: the run's PyTorch method at ``precision``, figures and scores."""
    import torch

    from ad_runtime.decoding import category_decoding
    from adcore.contracts.dataset import Sample
    from adcore.data.loading import make_loader
    from adcore.run.efficiency import synthetic_images
    from adcore.run.predict import load_method

    holder: dict[str, Any] = {}

    def make() -> Any:
        config, method, runtime = load_method(Path(run), category, "cpu", precision)
        holder.update(config=config, method=method, runtime=runtime)
        side = method.geometry.output_size
        images = {b: synthetic_images(b, side, "cpu", seed=b) for b in (1, batch)}

        def call(b: int) -> Any:
            with torch.no_grad(), runtime.autocast():
                return method.predict(images[b])

        return call

    def score(_: Any) -> list[float]:
        method, runtime, data = holder["method"], holder["runtime"], holder["config"].base.data
        decoding = category_decoding(
            [Path(p) for p in paths], data.intensity_range, data.max_image_pixels
        )
        samples = [Sample(image_path=Path(p), label=0, category=category) for p in paths]
        scores: list[float] = []
        with torch.no_grad(), runtime.autocast():
            for part in make_loader(samples, method.geometry, batch, decoding=decoding):
                scores += method.predict(part["image"]).scores.float().tolist()
        return scores

    figures = _measured(make, batch, warmup, iters, score)
    method = holder["method"]
    weights = sum(
        p.numel() * p.element_size()
        for p in {id(p): p for m in method.modules().values() for p in m.parameters()}.values()
    )
    figures["file_bytes"] = (Path(run) / category / "model.pt").stat().st_size + weights
    return figures


def _in_fresh_process(function: Any, *args: Any) -> dict[str, Any]:
    """``function(*args)`` in a new interpreter (its own peak memory); its result."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(function, *args).result()


def _row(
    format_name: str, precision: str, figures: dict[str, Any], labels: np.ndarray, **fields: Any
) -> FormatRow:
    from adcore.metrics import image_auroc

    scores = np.asarray(figures["scores"], dtype=np.float64)
    both = 0 < int(labels.sum()) < len(labels)
    return FormatRow(
        format=format_name,
        precision=precision,
        status=OK,
        auroc=image_auroc(scores, labels) if both else None,
        images=len(labels),
        latency_ms=figures["latency_ms"],
        throughput_ips=figures["throughput_ips"],
        peak_memory_mb=figures["peak_memory_mb"],
        peak_memory_source=figures["peak_memory_source"],
        **fields,
    )


def bundle_size_mb(folder: Path) -> float:
    """MiB of the bundle's graph files (the graph and, for an IR, its weights)."""
    from ad_runtime.bundle import read_bundle

    bundle = read_bundle(folder)
    names = [bundle.graph, *bundle.graph_files]
    return sum((folder / name).stat().st_size for name in names) / 2**20


def measure_bundle(
    folder: Path,
    paths: Sequence[Path],
    labels: np.ndarray,
    batch: int = 16,
    warmup: int = 2,
    iters: int = 5,
) -> FormatRow:
    """A bundle's row: its figures (in a fresh process) and image AUROC on ``paths`` [N]
    with ``labels`` [N]. Raises ``DataError``/``UsageError`` as :class:`ad_runtime.Model`
    does (read before the process starts, so the error is this process's)."""
    from ad_runtime.bundle import read_bundle
    from ad_runtime.model import Model

    bundle = read_bundle(folder)
    Model(folder)  # a bundle the runtime refuses is refused here, as one paragraph
    figures = _in_fresh_process(
        _bundle_figures, str(folder), [str(p) for p in paths], batch, warmup, iters
    )
    return _row(
        bundle.format, bundle.precision, figures, labels,
        bundle=str(folder), file_mb=bundle_size_mb(folder),
    )  # fmt: skip


def _samples_of_run(run: Path, category: str) -> tuple[list[Path], np.ndarray]:
    import csv

    from adcore.run.predict import run_test_scores

    with (run / category / "scores.csv").open(newline="") as stream:
        paths = [Path(row["path"]) for row in csv.DictReader(stream)]
    return paths, run_test_scores(run, category)[1]


def bench_images(
    resolved: Any | None, category: str, run: Path | None
) -> tuple[list[Path], np.ndarray]:
    """The test images [N] and labels [N] the AUROC is over: the data set's ``category``
    (when ``resolved`` names one), else the run's own test images (its ``scores.csv``)."""
    if resolved is not None:
        from adcore.run.components import build_dataset, select_categories

        dataset = build_dataset(resolved.dataset, resolved.dataset_config, resolved.base.data.root)
        select_categories(dataset, [category])
        samples = dataset.samples(category, "test")
        return [s.image_path for s in samples], np.array([s.label for s in samples])
    if run is None or not (run / category / "scores.csv").is_file():
        raise UsageError(
            "ad bench --model needs test images for the image AUROC, and the bundle's run "
            f"{run} is not here to give them.",
            "Name a data set: --dataset NAME --data-root PATH (and --category).",
        )
    return _samples_of_run(run, category)


def bench_formats(
    run: Path,
    category: str | None,
    formats: Sequence[str],
    precisions: Sequence[str],
    output: Path | None = None,
    resolved: Any | None = None,
    batch: int = 16,
    warmup: int = 2,
    iters: int = 5,
    progress: Any | None = None,
) -> FormatReport:
    """One row per (format, precision): ``torch`` measures the run's method, ``onnx`` and
    ``openvino`` export the run (into ``output/<format>-<precision>``, a temporary folder
    when None) and measure the bundle. A pair that is refused, fails to export or fails
    its parity check is a row with its status and reason, not an error."""
    from adcore.outputs.env import busy_machine_note, describe_machine
    from adcore.run.predict import pick_category

    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if unknown:
        raise UsageError(
            f"Unknown format {', '.join(unknown)} in --formats.",
            f"Use a comma-separated list of {', '.join(FORMAT_NAMES)}.",
        )
    machine = describe_machine()
    category = pick_category(run, category)
    paths, labels = bench_images(resolved, category, run)
    rows: list[FormatRow] = []
    with tempfile.TemporaryDirectory(prefix="ad-bench-") as scratch:
        folder = output or Path(scratch)
        for format_name in formats:
            for precision in precisions:
                if progress is not None:
                    progress.note(f"bench: {format_name} {precision}")
                if format_name == "torch":
                    rows.append(
                        _torch_row(run, category, precision, paths, labels, batch, warmup, iters)
                    )
                    continue
                target = folder / f"{format_name}-{precision}"
                rows.append(
                    _bundle_row(run, category, target, format_name, precision, paths, labels,
                                batch, warmup, iters)
                )  # fmt: skip
    env = json.loads((run / "env.json").read_text()) if (run / "env.json").is_file() else {}
    return FormatReport(
        method=str(yaml.safe_load((run / "config.yaml").read_text())["model"]["name"]),
        category=category,
        rows=rows,
        throughput_batch=batch,
        warmup_iters=warmup,
        measure_iters=iters,
        machine=machine,
        load_warning=busy_machine_note(machine),
        random_weights=bool(env.get("random_weights")),
    )


def _bundle_row(
    run: Path,
    category: str,
    target: Path,
    format_name: str,
    precision: str,
    paths: list[Path],
    labels: np.ndarray,
    batch: int,
    warmup: int,
    iters: int,
) -> FormatRow:
    """Export the run into ``target`` and measure the bundle; a refusal, a failed export or
    a failed parity check is the row's status and reason."""
    from ad_runtime.bundle import BUNDLE_FILE, read_bundle
    from adcore.run.export import export_run

    failed = {"format": format_name, "precision": precision}
    try:
        export_run(run, target, category, None, None, format_name, precision)
    except AdError as error:
        exported = (target / BUNDLE_FILE).is_file() and not read_bundle(target).parity.passed
        status = PARITY_FAILED if exported else FAILED
        where = str(target) if exported else ""
        return FormatRow(**failed, status=status, reason=str(error), bundle=where)
    try:
        return measure_bundle(target, paths, labels, batch, warmup, iters)
    except AdError as error:
        return FormatRow(**failed, status=FAILED, reason=str(error))


def _torch_row(
    run: Path,
    category: str,
    precision: str,
    paths: list[Path],
    labels: np.ndarray,
    batch: int,
    warmup: int,
    iters: int,
) -> FormatRow:
    """The run's PyTorch method at ``precision`` (fp32, bf16, fp16 as ``model.precision``
    allows on this device); a precision it cannot run is a failed row."""
    if precision not in TORCH_PRECISIONS:
        return FormatRow(
            format="torch", precision=precision, status=FAILED,
            reason=f"PyTorch runs {', '.join(TORCH_PRECISIONS)}, not {precision} (int8: "
            "--formats onnx).",
        )  # fmt: skip
    from adcore.infra.precision import check_precision

    try:
        check_precision("cpu", precision)
        figures = _in_fresh_process(
            _torch_figures, str(run), category, precision, [str(p) for p in paths], batch,
            warmup, iters,
        )  # fmt: skip
    except AdError as error:
        return FormatRow(format="torch", precision=precision, status=FAILED, reason=str(error))
    return _row("torch", precision, figures, labels, file_mb=figures["file_bytes"] / 2**20)


def bench_model(
    folder: Path,
    resolved: Any | None = None,
    category: str | None = None,
    batch: int = 16,
    warmup: int = 2,
    iters: int = 5,
) -> FormatReport:
    """``ad bench --model``: the bundle's one row, its AUROC on ``category`` (default: the
    bundle's) of the data set ``resolved`` names, else on its run's test images."""
    from ad_runtime.bundle import read_bundle
    from adcore.outputs.env import busy_machine_note, describe_machine

    machine = describe_machine()
    bundle = read_bundle(folder)
    category = category or bundle.category
    paths, labels = bench_images(resolved, category, Path(bundle.run) if not resolved else None)
    row = measure_bundle(folder, paths, labels, batch, warmup, iters)
    return FormatReport(
        method=bundle.method,
        category=category,
        rows=[row],
        throughput_batch=batch,
        warmup_iters=warmup,
        measure_iters=iters,
        machine=machine,
        load_warning=busy_machine_note(machine),
        random_weights=bool(bundle.weights.get("random_backbone")),
    )

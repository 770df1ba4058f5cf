"""``ad export``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from adcore.cli.options import NoProgressOption

if TYPE_CHECKING:
    from ad_runtime.bundle import Bundle

FormatOption = Annotated[
    str,
    typer.Option("--format", help="Graph format: onnx (ONNX Runtime) or openvino (OpenVINO IR)."),
]
PrecisionOption = Annotated[
    str,
    typer.Option(
        "--precision",
        help="fp32 (parity within 1e-4 or the export fails); onnx: int8 (dynamic "
        "quantisation); openvino: bf16 or fp16 (OpenVINO's inference precision). Reduced "
        "precisions report their deltas.",
    ),
]


def export_command(
    run: Annotated[
        Path,
        typer.Option(
            "--run", help="Run folder written by ad eval --save-model.", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Bundle folder to write (model.onnx or model.xml/.bin, bundle.json).",
        ),
    ],
    category: Annotated[
        str | None,
        typer.Option(
            "--category", help="Category whose fitted model to export (if the run has several)."
        ),
    ] = None,
    export_format: FormatOption = "onnx",
    precision: PrecisionOption = "fp32",
    parity_images: Annotated[
        int | None,
        typer.Option(
            "--parity-images",
            min=1,
            help="Test images of the run the parity check runs (default: all).",
        ),
    ] = None,
    no_progress: NoProgressOption = False,
) -> None:
    """Export a run's fitted method as a bundle: an ONNX graph or OpenVINO IR (preprocessed
    images in, raw scores and maps out) and bundle.json (preprocessing, decoding, score
    scale, thresholds, weights, and its parity with PyTorch on the run's test images)."""
    from adcore.infra.progress import Progress
    from adcore.run.export import check_format, export_run

    check_format(export_format, precision)
    with Progress(enabled=not no_progress) as progress:
        report = export_run(
            run.expanduser(), output.expanduser(), category, parity_images, progress,
            export_format, precision,
        )  # fmt: skip
    Console().print(f"{parity_line(report.bundle)}\nBundle: {report.folder}", highlight=False)


def parity_line(bundle: Bundle) -> str:
    """The parity figures in one sentence: deltas, the limit (or none), both AUROCs."""
    parity = bundle.parity
    limit = (
        f"limit {parity.tolerance:g}"
        if parity.tolerance is not None
        else f"{bundle.precision}: reported, no limit"
    )
    engine = "OpenVINO" if bundle.format == "openvino" else "ONNX Runtime"
    return (
        f"Parity on {parity.images} test images: scores {parity.score_max_rel:.2g}, maps "
        f"{parity.map_max_rel:.2g} (largest difference relative to the largest output; "
        f"{limit}); image AUROC {_auroc(parity.auroc_torch)} (PyTorch fp32) vs "
        f"{_auroc(parity.auroc_bundle)} ({engine} {bundle.precision})."
    )


def _auroc(value: float | None) -> str:
    """An AUROC in percent, or why there is none (the parity images hold one class)."""
    if value is None:
        return "n/a (the parity images are all good or all defective: give more)"
    return f"{100 * value:.2f}"

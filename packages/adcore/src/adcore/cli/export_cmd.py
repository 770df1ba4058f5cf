"""``ad export``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adcore.cli.options import NoProgressOption


def export_command(
    run: Annotated[
        Path,
        typer.Option(
            "--run", help="Run folder written by ad eval --save-model.", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option("--output", "-o", help="Bundle folder to write (model.onnx, bundle.json)."),
    ],
    category: Annotated[
        str | None,
        typer.Option(
            "--category", help="Category whose fitted model to export (if the run has several)."
        ),
    ] = None,
    export_format: Annotated[
        str, typer.Option("--format", help="Graph format: onnx (ONNX Runtime).")
    ] = "onnx",
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
    """Export a run's fitted method as a bundle: an fp32 ONNX graph (preprocessed images in,
    raw scores and maps out) and bundle.json (preprocessing, decoding, score scale,
    thresholds, weights, and its parity with PyTorch on the run's test images)."""
    from adcore.infra.errors import UsageError
    from adcore.infra.progress import Progress
    from adcore.run.export import export_run

    if export_format != "onnx":
        raise UsageError(f"Unknown export format {export_format!r}.", "Use --format onnx.")
    with Progress(enabled=not no_progress) as progress:
        report = export_run(
            run.expanduser(), output.expanduser(), category, parity_images, progress
        )
    parity = report.bundle.parity
    Console().print(
        f"Parity on {parity.images} test images: scores {parity.score_max_rel:.2g}, maps "
        f"{parity.map_max_rel:.2g} (largest difference relative to the largest output; "
        f"limit {parity.tolerance:g}); image AUROC {parity.auroc_torch} (PyTorch) vs "
        f"{parity.auroc_bundle} (ONNX).\nBundle: {report.folder}",
        highlight=False,
    )

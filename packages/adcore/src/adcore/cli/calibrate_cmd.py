"""``ad calibrate``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adcore.cli.options import (
    BundleOption,
    DeviceOption,
    FittedCategoryOption,
    JsonOption,
    NoProgressOption,
    SavedRunOption,
    flag,
)

NormalOption = Annotated[
    list[Path],
    typer.Option(
        "--normal",
        help="Folder (or file) of good images to calibrate on (repeatable).",
        show_default=False,
    ),
]


FprOption = Annotated[
    float | None,
    typer.Option(
        "--fpr",
        help="Target false-positive rate on good images (the default rule, at 0.001).",
    ),
]

QuantileOption = Annotated[
    float | None,
    typer.Option("--quantile", help="Threshold at this quantile of the good scores."),
]

RecallOption = Annotated[
    float | None,
    typer.Option("--recall", help="Target recall on the --defects images."),
]

F1Option = Annotated[
    bool, flag("--f1", help="F1-optimal threshold over good and --defects images.")
]

DefectsOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--defects", help="Folder of labelled defect images (for --recall, --f1; repeatable)."
    ),
]

PixelFprOption = Annotated[
    float,
    typer.Option(
        "--pixel-fpr",
        help="Target rate of good map pixels at or above the pixel threshold (0: none).",
    ),
]

BatchSizeOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per batch.")]


def calibrate_command(
    normal: NormalOption,
    run: SavedRunOption = None,
    model: BundleOption = None,
    category: FittedCategoryOption = None,
    fpr: FprOption = None,
    quantile: QuantileOption = None,
    recall: RecallOption = None,
    f1: F1Option = False,
    defects: DefectsOption = None,
    pixel_fpr: PixelFprOption = 0.001,
    batch_size: BatchSizeOption = 8,
    device: DeviceOption = None,
    no_progress: NoProgressOption = False,
    as_json: JsonOption = False,
) -> None:
    """Set the image (and pixel) threshold from good parts for a target false-positive rate,
    with the confidence the number of images allows, and write threshold.json beside the
    model (the run's category folder, or the bundle), where ad predict, ad export,
    ad-runtime and ad serve use it."""
    from ad_runtime.calibration import describe
    from ad_runtime.thresholds import parse_rule
    from adcore.infra.errors import UsageError
    from adcore.infra.progress import Progress
    from adcore.run.calibrate import calibrate_model

    if (run is None) == (model is None):
        raise UsageError(
            "ad calibrate needs one model.", "Give either --run RUN or --model BUNDLE."
        )
    if not 0.0 <= pixel_fpr < 1.0:
        raise UsageError(f"--pixel-fpr {pixel_fpr:g} is outside [0, 1).", "Give e.g. 0.001.")
    rule = parse_rule(fpr, quantile, recall, f1, have_defects=bool(defects))
    with Progress(enabled=not no_progress and not as_json) as progress:
        calibration, path = calibrate_model(
            normal, rule, run and run.expanduser(), category, model and model.expanduser(),
            defects, pixel_fpr or None, batch_size, device or "auto", progress,
        )  # fmt: skip
    if as_json:
        print(calibration.model_dump_json(indent=2))
        return
    Console().print(describe(calibration, path), highlight=False, soft_wrap=True)

"""``ad predict``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from adcore.cli.options import (
    BundleOption,
    DeviceOption,
    FittedCategoryOption,
    JsonOption,
    SavedRunOption,
    flag,
)
from adcore.cli.tables import print_table

if TYPE_CHECKING:
    from adcore.run.predict import PredictOutput


InputOption = Annotated[
    list[Path] | None,
    typer.Option(
        "--input",
        "-i",
        help="Image file or folder to score (repeatable; or give --watch).",
        show_default=False,
    ),
]


OutOption = Annotated[
    Path, typer.Option("--out", help="Folder for scores.csv, maps/ and overlays/.")
]

ThresholdOption = Annotated[
    float | None,
    typer.Option(
        "--threshold",
        help="Image score at or above which an image is anomalous (default: the "
        "threshold.json of ad calibrate, else the F1-optimal one on the run's test set).",
    ),
]


NoOverlaysOption = Annotated[bool, flag("--no-overlays", help="Write scores and maps only.")]

WatchOption = Annotated[
    Path | None,
    typer.Option(
        "--watch",
        help="Score images as they appear in this folder, appending to scores.csv and "
        "scores.jsonl in --out (until Ctrl-C or a bound below).",
    ),
]

WatchTimeoutOption = Annotated[
    float | None,
    typer.Option("--watch-timeout", help="Stop watching after SECONDS without a new image."),
]

MaxImagesOption = Annotated[
    int | None, typer.Option("--max-images", help="Stop watching after N images.")
]

PollOption = Annotated[
    float, typer.Option("--poll", help="Seconds between two looks at the watched folder.")
]


def predict_command(
    input_: InputOption = None,
    run: SavedRunOption = None,
    model: BundleOption = None,
    out: OutOption = Path("predictions"),
    threshold: ThresholdOption = None,
    category: FittedCategoryOption = None,
    device: DeviceOption = None,
    no_overlays: NoOverlaysOption = False,
    as_json: JsonOption = False,
    watch: WatchOption = None,
    watch_timeout: WatchTimeoutOption = None,
    max_images: MaxImagesOption = None,
    poll: PollOption = 0.5,
) -> None:
    """Score new images with a fitted method saved by a run (--run) or exported to a bundle
    (--model): scores, maps and overlays; or a watched folder as images arrive (--watch)."""
    from adcore.infra.errors import UsageError

    out, input_ = out.expanduser(), [path.expanduser() for path in input_ or []]  # '~/x' quoted
    if (run is None) == (model is None):
        raise UsageError("ad predict needs one model.", "Give either --run RUN or --model BUNDLE.")
    if (watch is None) == (not input_):
        raise UsageError(
            "ad predict needs images or a folder to watch, not both.",
            "Give --input FILE_OR_FOLDER, or --watch DIR.",
        )
    if watch is not None:
        watch_command(
            watch.expanduser(),
            out,
            run,
            model,
            category,
            threshold,
            device,
            watch_timeout,
            max_images,
            poll,
        )
        return
    if model is not None:
        from adcore.run.bundle_predict import predict_bundle

        result = predict_bundle(model.expanduser(), input_, out, threshold, not no_overlays)
    else:
        from adcore.run.predict import predict

        assert run is not None
        result = predict(
            run.expanduser(), input_, out, threshold, category, device or "auto",
            overlays=not no_overlays,
        )  # fmt: skip
    if as_json:
        print(json.dumps(predictions_json(result), indent=2))
        return
    print_predictions(result, out)


def watch_command(
    folder: Path,
    out: Path,
    run: Path | None,
    model: Path | None,
    category: str | None,
    threshold: float | None,
    device: str | None,
    timeout: float | None,
    max_images: int | None,
    poll: float,
) -> None:
    """``ad predict --watch``: one line per batch on stderr, the outcome at the end."""
    from ad_runtime.watch import describe
    from adcore.run.predict_watch import watch_folder

    console = Console(stderr=True)
    outcome = watch_folder(
        folder.expanduser(), out.expanduser(), run and run.expanduser(),
        model and model.expanduser(), category, threshold, device or "auto",
        idle_timeout=timeout, max_images=max_images, poll_s=poll,
        report=lambda line: console.print(line, highlight=False, soft_wrap=True),
    )  # fmt: skip
    Console().print(describe(outcome), highlight=False, soft_wrap=True)


RANDOM_WEIGHTS_NOTE = (
    "[bold yellow]Random weights:[/] the run's models were randomly initialised "
    "(--random-weights); these scores and verdicts show the pipeline working, not the "
    "method's accuracy."
)


def predictions_json(result: PredictOutput) -> dict[str, Any]:
    """``ad predict --json``: the category, the threshold and each image's verdict."""
    rows = [
        {
            "path": str(i.path),
            "score": i.score,
            "normalised_score": i.normalised,
            "anomalous": i.anomalous,
        }
        for i in result.images
    ]
    return {
        "category": result.category,
        "threshold": result.threshold,
        "threshold_source": result.threshold_source,
        "random_weights": result.random_weights,
        "notes": result.notes,
        "images": rows,
    }


def print_predictions(result: PredictOutput, out: Path) -> None:
    """One row per image (score, normalised score, verdict) and what normalised means."""
    table = Table(
        title=f"{result.category}: threshold {result.threshold:.4g} ({result.threshold_source})"
    )
    table.add_column("image")
    table.add_column("score", justify="right")
    table.add_column("normalised", justify="right")
    table.add_column("verdict")
    for image in result.images:
        verdict = "[bold red]anomalous[/]" if image.anomalous else "normal"
        table.add_row(str(image.path), f"{image.score:.4g}", f"{image.normalised:.3f}", verdict)
    console = Console()
    print_table(table, console)
    if result.scale is not None:
        scale = result.scale
        console.print(
            f"normalised: 0 at the run's lowest test score ({scale.low:.4g}; the threshold "
            f"when lower), 0.5 at the threshold ({scale.threshold:.4g}), 1 at its highest "
            f"({scale.high:.4g}), linear in between; >= 0.5 means anomalous.",
            highlight=False,
        )
        if scale.low >= scale.threshold:
            console.print(
                "[yellow]warning[/] the threshold is at or below every test score of the run, "
                "so every image is anomalous: calibrate it on good parts the model was not "
                "fitted on (ad calibrate --normal DIR), not on its training images.",
                highlight=False,
            )
    if result.random_weights:
        console.print(RANDOM_WEIGHTS_NOTE)
    for note in result.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    console.print(f"Results: {out}")

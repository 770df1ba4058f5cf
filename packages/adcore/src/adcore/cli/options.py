"""Options shared by the commands that build an experiment config."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from adcore.infra.errors import UsageError


def flag(name: str, help: str) -> Any:
    """A switch: ``name`` alone turns it on and takes no value (``--help`` shows no type
    beside it, where typer would show ``<bool>``)."""
    return typer.Option(name, help=help, metavar="")


ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="YAML experiment config (may use extends:).")
]
SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: section.key=value (repeatable)."),
]
MethodOption = Annotated[str | None, typer.Option("--method", "-m", help="Method plugin name.")]
DatasetOption = Annotated[str | None, typer.Option("--dataset", "-d", help="Data set plugin name.")]
CategoryOption = Annotated[
    list[str] | None,
    typer.Option("--category", help="Category to run (repeatable or comma-separated)."),
]
KShotOption = Annotated[
    str | None, typer.Option("--k-shot", "-k", help="Normal images for fit: 0, a count, or all.")
]
DeviceOption = Annotated[str | None, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
DataRootOption = Annotated[Path | None, typer.Option("--data-root", help="Data set root folder.")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="Results root folder.")]
RandomWeightsOption = Annotated[
    bool,
    flag("--random-weights", help="Randomly initialise every model (demos and tests; flagged)."),
]
JsonOption = Annotated[bool, flag("--json", help="Print machine-readable JSON.")]
NoProgressOption = Annotated[bool, flag("--no-progress", help="No progress bars.")]
SkipBadSamplesOption = Annotated[
    bool, flag("--skip-bad-samples", help="Leave out unreadable or bad samples.")
]
# a fitted model, for the commands that use one (ad predict, ad calibrate)
SavedRunOption = Annotated[
    Path | None,
    typer.Option("--run", help="Run folder written by ad eval --save-model (or give --model)."),
]
BundleOption = Annotated[
    Path | None,
    typer.Option(
        "--model", help="Bundle folder written by ad export (run by ONNX Runtime or OpenVINO)."
    ),
]
FittedCategoryOption = Annotated[
    str | None,
    typer.Option("--category", help="Category whose fitted model to use (if the run has several)."),
]


def parse_k_shot(value: str | None) -> int | str | None:
    if value is None:
        return None
    if value.strip().lower() in {"all", "full"}:
        return "all"
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise UsageError(
            f"--k-shot {value!r} is not a whole number of images (0 or more) or 'all'.",
            "Use 0 (zero-shot), a count such as 4, or all (full-shot).",
        )
    return count


def sugar(
    method: str | None = None,
    dataset: str | None = None,
    category: list[str] | None = None,
    k_shot: str | None = None,
    device: str | None = None,
    data_root: Path | None = None,
    output: Path | None = None,
) -> dict[str, Any]:
    """The sugar options as dotted config keys."""
    categories = [c for item in category or [] for c in item.split(",") if c] or None
    return {
        "model.name": method,
        "data.dataset": dataset,
        "data.categories": categories,
        "data.k_shot": parse_k_shot(k_shot),
        "model.device": device,
        "data.root": str(data_root) if data_root else None,
        "experiment.output_root": str(output) if output else None,
    }


def resolved_config(
    config: Path | None,
    assignments: list[str] | None,
    random_weights: bool = False,
    **sugar_values: Any,
):
    """File, sugar options and --set merged, validated, and the plugins resolved."""
    from adcore.config.files import build_raw_config
    from adcore.config.resolve import resolve_raw
    from adcore.plugins.registry import get_registry

    locations: dict[str, str] = {}
    raw = build_raw_config(config, sugar(**sugar_values), assignments, locations)
    return resolve_raw(raw, get_registry(), random_weights, locations)

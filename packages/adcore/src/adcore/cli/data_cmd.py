"""``ad data check`` and ``ad data download``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from adcore.cli.options import CategoryOption, DataRootOption, JsonOption, SetOption, sugar
from adcore.infra.errors import DataError, PluginError, UsageError

app = typer.Typer(help="Check a data set's layout, or download one.", no_args_is_help=True)
ResolutionOption = Annotated[
    int | None,
    typer.Option(
        "--resolution",
        min=1,
        help="Also count anomalous masks that vanish at this input side (a method's).",
    ),
]
InventoryOption = Annotated[
    Path | None,
    typer.Option(
        "--inventory",
        help="Write every file under each category's folder to this CSV: used (split, image "
        "or mask, paired with what) or ignored with its reason.",
    ),
]


@app.command("check")
def check(
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="Data set plugin name.")],
    data_root: DataRootOption = None,
    category: CategoryOption = None,
    as_json: JsonOption = False,
    assignments: SetOption = None,
    resolution: ResolutionOption = None,
    inventory: InventoryOption = None,
) -> None:
    """Read the layout without running a model: counts, masks, unreadable files, sizes,
    bit depths, orientation tags, grey-level masks, masks that contradict their labels,
    and the inventory: every file used or ignored, counted per reason (--inventory FILE
    lists each one).

    Exits 1 when anything would make an evaluation wrong. --set data.max_image_pixels=N and
    --set data.intensity_range=... apply as in ad eval.
    """
    from adcore.config.files import build_raw_config
    from adcore.config.problems import validate_base
    from adcore.config.resolve import resolve_dataset
    from adcore.data.datacheck import check_dataset, render_report
    from adcore.plugins.registry import get_registry
    from adcore.run.components import build_dataset, select_categories

    chosen = sugar(dataset=dataset, data_root=data_root, category=category)
    locations: dict[str, str] = {}
    raw = build_raw_config(None, chosen, assignments, locations)
    base = validate_base(raw, locations)
    component, settings = resolve_dataset(base, get_registry(), locations)
    data = build_dataset(component, settings, base.data.root)
    categories = select_categories(data, base.data.categories)
    report = check_dataset(
        data,
        categories,
        max_image_pixels=base.data.max_image_pixels,
        intensity_rule=base.data.intensity_range,
        resolution=resolution,
    )
    if inventory is not None:
        from adcore.data.inventory import write_inventory

        write_inventory(inventory.expanduser(), report.inventory_entries)
    if as_json:
        print(report.model_dump_json(indent=2))
    else:
        render_report(report, Console())
    if not report.ok:
        raise typer.Exit(code=1)


@app.command("download")
def download(
    dataset: Annotated[str, typer.Argument(help="Data set plugin name, e.g. visa.")],
    to: Annotated[Path, typer.Option("--to", help="Folder to download and unpack into.")],
) -> None:
    """Fetch and unpack a public data set, resuming a partial download."""
    from adcore.infra.progress import Progress
    from adcore.plugins.registry import get_registry

    try:
        spec = get_registry().resolve("dataset", dataset).spec
    except PluginError as error:  # a name given on the command line: a usage error
        raise UsageError(error.problem, error.hint) from None
    if spec.download is None:
        guide = spec.download_help or "Obtain it from its publisher and pass --data-root R."
        raise DataError(  # the guides call the data root R: show the folder given instead
            f"Data set {spec.name!r} cannot be downloaded by ad.",
            re.sub(r"\bR\b", str(to), guide),
        )
    with Progress() as progress:
        spec.download(to.expanduser(), progress)
    Console().print(f"{spec.name} is ready under {to}")

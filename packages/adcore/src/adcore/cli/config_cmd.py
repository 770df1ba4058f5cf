"""``ad config show`` and ``ad config schema``."""

from __future__ import annotations

import json

import typer
import yaml

from adcore.cli.options import (
    CategoryOption,
    ConfigOption,
    DataRootOption,
    DatasetOption,
    DeviceOption,
    JsonOption,
    KShotOption,
    MethodOption,
    OutputOption,
    RandomWeightsOption,
    SetOption,
    resolved_config,
)

app = typer.Typer(help="Show the resolved config or its JSON schema.", no_args_is_help=True)


@app.command("show")
def show(
    config: ConfigOption = None,
    set_: SetOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    category: CategoryOption = None,
    k_shot: KShotOption = None,
    device: DeviceOption = None,
    data_root: DataRootOption = None,
    output: OutputOption = None,
    random_weights: RandomWeightsOption = False,
    as_json: JsonOption = False,
) -> None:
    """Print the config after extends, options and --set, with every plugin default filled."""
    resolved = resolved_config(
        config,
        set_,
        random_weights,
        method=method,
        dataset=dataset,
        category=category,
        k_shot=k_shot,
        device=device,
        data_root=data_root,
        output=output,
    )
    data = resolved.to_dict()
    print(json.dumps(data, indent=2) if as_json else yaml.safe_dump(data, sort_keys=False), end="")


@app.command("schema")
def schema() -> None:
    """Print the JSON schema of the config, each installed plugin's settings included."""
    from adcore.config.schema import config_schema
    from adcore.plugins.registry import get_registry

    print(json.dumps(config_schema(get_registry()), indent=2))

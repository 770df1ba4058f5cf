"""``ad train``: optimise a trainable method on an auxiliary data set's test split."""

from __future__ import annotations

from typing import Annotated

from rich.console import Console

from adcore.cli.options import (
    CategoryOption,
    ConfigOption,
    DataRootOption,
    DatasetOption,
    DeviceOption,
    MethodOption,
    NoProgressOption,
    OutputOption,
    RandomWeightsOption,
    SetOption,
    SkipBadSamplesOption,
    flag,
    resolved_config,
)


def train_command(
    config: ConfigOption = None,
    set_: SetOption = None,
    method: MethodOption = None,
    dataset: DatasetOption = None,
    category: CategoryOption = None,
    device: DeviceOption = None,
    data_root: DataRootOption = None,
    output: OutputOption = None,
    random_weights: RandomWeightsOption = False,
    restart: Annotated[
        bool, flag("--restart", help="Start from epoch 0 instead of resuming.")
    ] = False,
    skip_bad_samples: SkipBadSamplesOption = False,
    no_progress: NoProgressOption = False,
) -> None:
    """Train a method's prompts/adaptors on every category's test images and masks.

    The method runs its own training phases (e.g. miniCLIP alternates textual and visual
    passes); writes checkpoint.safetensors (trained tensors only), train_log.csv and
    loss_curve.png under results/<dataset>/<method>/<experiment>/; an interrupted run resumes.
    Bad files are refused before any model work (as in ad eval), or left out and named with
    --skip-bad-samples.
    """
    from adcore.run.training import model_options, run_training

    assignments = list(set_ or [])
    if skip_bad_samples:
        assignments.append("data.skip_bad_samples=true")
    resolved = resolved_config(
        config,
        assignments,
        random_weights,
        method=method,
        dataset=dataset,
        category=category,
        device=device,
        data_root=data_root,
        output=output,
    )
    console = Console()
    result = run_training(
        resolved,
        restart=restart,
        progress=not no_progress,
        note=lambda text: console.print(text, highlight=False),
    )
    for line in result.summary(resolved.method.spec.name, model_options(resolved)):
        console.print(line, highlight=False, soft_wrap=True)  # one line to copy, any width

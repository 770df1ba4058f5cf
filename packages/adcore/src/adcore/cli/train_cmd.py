"""``ad train``: optimise a trainable method on an auxiliary data set's test split."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from adcore.cli.options import (
    CategoryOption,
    ConfigOption,
    DataRootOption,
    DatasetOption,
    DeviceOption,
    MethodOption,
    OutputOption,
    RandomWeightsOption,
    SetOption,
    resolved_config,
)
from adcore.infra.errors import DataError, PluginError


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
        bool, typer.Option("--restart", help="Start from epoch 0 instead of resuming.")
    ] = False,
    skip_bad_samples: Annotated[
        bool, typer.Option("--skip-bad-samples", help="Leave out unreadable or bad samples.")
    ] = False,
    no_progress: Annotated[bool, typer.Option("--no-progress", help="No progress bars.")] = False,
) -> None:
    """Train a method's prompts/adaptors on every category's test images and masks.

    The method runs its own training phases (e.g. miniCLIP alternates textual and visual
    passes); writes checkpoint.safetensors (trained tensors only), train_log.csv and
    loss_curve.png under results/<dataset>/<method>/<experiment>/; an interrupted run resumes.
    Bad files are refused before any model work (as in ad eval), or left out and named with
    --skip-bad-samples.
    """
    from adcore.contracts.method import TrainableMethod
    from adcore.plugins.registry import get_registry
    from adcore.run.preparation import screen_samples, skipped_note
    from adcore.run.runner import Evaluation, RunOptions
    from adcore.run.training import train_method

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
    evaluation = Evaluation(resolved, get_registry(), RunOptions(show_progress=False))
    data = resolved.base.data
    samples, bad = screen_samples(  # before any model work, as ad eval does
        [s for name in evaluation.categories for s in evaluation.dataset.samples(name, "test")],
        data.skip_bad_samples,
        evaluation.dataset.requires_masks,
        data.max_image_pixels,
    )
    if not samples:
        raise DataError("No usable training images are left.", "Check the data set.")
    unmasked = [s for s in samples if s.label == 1 and s.mask_path is None]
    if unmasked:
        reason = evaluation.dataset.undefined_levels.get("pixel", "no mask file was found")
        raise DataError(
            f"{len(unmasked)} anomalous training image(s) of data set "
            f"{resolved.dataset.spec.name!r} have no mask (e.g. {unmasked[0].image_path}): "
            f"{reason}. Training would take every pixel of them as normal.",
            "Train on a data set with defect masks (e.g. MVTec-AD or VisA), or add the masks.",
        )
    built = evaluation.build_method()
    if not isinstance(built, TrainableMethod):
        raise PluginError(
            f"Method {resolved.method.spec.name!r} has nothing to train.",
            "ad train is for trainable methods (see `ad list-plugins`), e.g. afclip.",
        )
    console = Console()
    for name in evaluation.categories:  # the files --skip-bad-samples left out
        left_out = [b for b in bad if b.sample.category == name]
        if left_out:
            console.print(f"[yellow]note[/] {name}: {skipped_note(left_out)}", highlight=False)
    if resolved.random_weights:
        console.print("[yellow]Random weights[/]: the frozen backbone is randomly initialised.")
    result = train_method(
        built,
        samples,
        built.training_settings(),
        evaluation.layout.root,
        evaluation.runtime,
        config=resolved.to_dict(),
        resume=not restart,
        progress=not no_progress,
        num_workers=data.num_workers,
        class_names={name: evaluation.dataset.class_name(name) for name in evaluation.categories},
    )
    losses = ", ".join(f"{loss:.4f}" for loss in result.epoch_losses)
    console.print(f"Trained {result.epochs} epoch(s); mean loss per epoch: {losses}")
    console.print(f"Checkpoint: {result.checkpoint}")
    console.print(
        f"Use it: ad eval --method {resolved.method.spec.name} "
        f"--set model.checkpoint={result.checkpoint}"
    )

"""What ``ad train`` keeps for every :class:`TrainableMethod`: data, logging, checkpoints.

The method drives the optimisation: each epoch runs its ``training_phases`` in order, each a
full pass over the data with the phase's own optimiser and step (one Adam phase unless the
method says otherwise). The host shuffles the data (one seed per epoch and phase, so a
resumed run sees the same order), applies mixed precision, and after each epoch writes the
trained tensors atomically to ``checkpoint.safetensors`` with a record of the run (config,
weights identity including the frozen backbone's hash, epoch) in the file's metadata and in
``checkpoint.json``; epochs the method lists in ``keep_epochs`` are also kept as
``checkpoint_epoch<N>.safetensors``. An interrupted run resumes after the last finished
epoch, with every phase's optimiser state."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ad_runtime.preprocessing import Preprocessing
from adcore.contracts.dataset import Sample
from adcore.contracts.method import (
    Runtime,
    TrainableMethod,
    TrainingBatch,
    TrainingPhase,
    TrainingSettings,
)
from adcore.infra.errors import DataError, OutputError, PluginError
from adcore.outputs.training_log import CURVE_NAME, LOG_NAME, plot_curve, read_log, write_log
from adcore.toolkit.trained import (
    CHECKPOINT_NAME,
    FORMAT,
    OPTIMIZER_NAME,
    checkpoint_metadata,
    save_checkpoint,
)
from adcore.toolkit.weights import require_same_weights

if TYPE_CHECKING:
    from adcore.config.sections import ResolvedConfig
    from adcore.data.datacheck import BadSample
    from adcore.run.runner import Evaluation


@dataclass
class TrainingResult:
    """Where the outputs are and how the run went; ``epoch_losses`` are mean total losses."""

    checkpoint: Path
    log: Path
    curve: Path
    epochs: int
    resumed_from: int = 0
    epoch_losses: list[float] = field(default_factory=list)

    def summary(self, method: str) -> list[str]:
        """The closing lines of ``ad train``: the losses, the checkpoint, how to use it."""
        losses = ", ".join(f"{loss:.4f}" for loss in self.epoch_losses)
        return [
            f"Trained {self.epochs} epoch(s); mean loss per epoch: {losses}",
            f"Checkpoint: {self.checkpoint}",
            f"Use it: ad eval --method {method} --set model.checkpoint={self.checkpoint}",
        ]


def _output_folder(out_dir: Path) -> Path:
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"Cannot create {out_dir} ({error}).", "Choose a writable folder."
        ) from None
    return out_dir


def _resume(
    method: TrainableMethod,
    settings: TrainingSettings,
    out_dir: Path,
    phases: list[TrainingPhase],
    device: str,
) -> tuple[int, list[dict[str, Any]], list[float]]:
    """Load the last finished epoch's tensors and optimiser states; -> (epoch, log, losses)."""
    import torch

    from adcore.toolkit.weights import load_checkpoint

    record = checkpoint_metadata(out_dir / CHECKPOINT_NAME)
    recorded = record.get("settings")
    if recorded:
        try:
            previous = TrainingSettings.model_validate({**recorded, "epochs": settings.epochs})
        except ValueError:
            previous = None
        if previous != settings:
            raise OutputError(
                f"{out_dir} holds a training run with other settings ({recorded}).",
                "Use another experiment name, or delete the folder to start over.",
            )
    require_same_weights(
        record.get("weights_identity"),
        method.weights_identity(),
        f"The training run in {out_dir} was made",
        "Use another experiment name, or delete the folder to start over.",
    )
    method.load_trainable_state(load_checkpoint(out_dir / CHECKPOINT_NAME))
    optimizer_file = out_dir / OPTIMIZER_NAME
    if optimizer_file.is_file():
        states = torch.load(optimizer_file, map_location=device, weights_only=True)
        if len(phases) == 1 and "state" in states:  # one optimiser, as written before phases
            states = {phases[0].name: states}
        for phase in phases:
            if phase.name in states:
                phase.optimizer.load_state_dict(states[phase.name])
    epoch = int(record.get("epoch", 0))
    log = read_log(out_dir / LOG_NAME, epoch)
    return epoch, log, list(record.get("epoch_losses", []))[:epoch]


def _batches(
    samples: Sequence[Sample],
    geometry: Preprocessing,
    settings: TrainingSettings,
    seed: int,
    runtime: Runtime,
    class_names: Mapping[str, str],
    num_workers: int,
) -> Any:
    """Shuffled :class:`TrainingBatch` es on the device, in an order fixed by ``seed``."""
    from adcore.data.loading import make_loader

    loader = make_loader(
        samples,
        geometry,
        settings.batch_size,
        num_workers=num_workers,
        shuffle=True,
        seed=seed,
        pin_memory=runtime.device.startswith("cuda"),
        soft_masks=True,
    )
    for batch in loader:
        categories = tuple(samples[int(i)].category for i in batch["index"])
        # the soft mask where the geometry's mask filter makes one (the authors' targets)
        masks = batch.get("soft_mask", batch["mask"])  # [B,S,S] float in [0,1] or uint8 0/1
        yield TrainingBatch(
            images=batch["image"].to(runtime.device, non_blocking=True),
            masks=masks.to(runtime.device, non_blocking=True).float(),
            labels=batch["label"].to(runtime.device),
            categories=categories,
            class_names=tuple(class_names.get(c, c.replace("_", " ")) for c in categories),
        )


def _run_phase(
    phase: TrainingPhase, data: Any, runtime: Runtime, scaler: Any
) -> Iterator[dict[str, float]]:
    """One pass of ``phase`` over ``data``, yielding each step's losses as numbers."""
    if phase.begin is not None:
        phase.begin()
    for batch in data:
        with runtime.autocast():
            losses = phase.step(batch)
        phase.optimizer.zero_grad(set_to_none=True)
        scaler.scale(losses["loss"]).backward()
        scaler.step(phase.optimizer)
        scaler.update()
        yield {name: float(value.detach()) for name, value in losses.items()}


@dataclass
class _Training:
    """One ``ad train`` run's state between epochs: the method, its phases and the log so far."""

    method: TrainableMethod
    settings: TrainingSettings
    phases: list[TrainingPhase]
    runtime: Runtime
    scaler: Any
    out_dir: Path
    config: dict[str, Any]
    batches: Callable[[int], Iterator[TrainingBatch]]
    batches_per_pass: int
    rows: list[dict[str, Any]] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)

    def run_epochs(self, start_epoch: int, progress: bool) -> None:
        """Epochs ``start_epoch + 1`` to ``settings.epochs``, with a progress bar."""
        from adcore.infra.progress import Progress

        steps_per_epoch = self.batches_per_pass * len(self.phases)
        with (
            Progress(enabled=progress) as bars,
            bars.task("training", total=self.settings.epochs * steps_per_epoch) as advance,
        ):
            if start_epoch:
                bars.note(f"Resuming {self.out_dir} after epoch {start_epoch}.")
                advance(start_epoch * steps_per_epoch)
            for epoch in range(start_epoch + 1, self.settings.epochs + 1):
                self.run_epoch(epoch, advance)

    def run_epoch(self, epoch: int, advance: Callable[..., None]) -> None:
        """Every phase of ``epoch`` in order, then the checkpoint, log and curve."""
        phases, totals = self.phases, []
        for index, phase in enumerate(phases):
            # One seed per (epoch, phase): a resumed run sees the same order as a straight one.
            seed = self.settings.seed + epoch * len(phases) + index - (len(phases) - 1)
            first = ((epoch - 1) * len(phases) + index) * self.batches_per_pass
            named = {"phase": phase.name} if len(phases) > 1 else {}
            steps = _run_phase(phase, self.batches(seed), self.runtime, self.scaler)
            for step, values in enumerate(steps, start=1):
                totals.append(values["loss"])
                row = {"epoch": epoch, "step": step, "global_step": first + step}
                self.rows.append(row | named | values)
                advance(1, status=f"epoch {epoch} {phase.name} loss {values['loss']:.4f}")
        self.epoch_losses.append(sum(totals) / max(len(totals), 1))
        self.save(epoch)

    def save(self, epoch: int) -> None:
        record = {
            "format": FORMAT,
            "epoch": epoch,
            "settings": self.settings.model_dump(mode="json"),
            "weights_identity": self.method.weights_identity(),
            "config": self.config,
            "epoch_losses": self.epoch_losses,
        }
        optimizers = {phase.name: phase.optimizer.state_dict() for phase in self.phases}
        keep = epoch in self.settings.keep_epochs
        save_checkpoint(self.out_dir, self.method.trainable_state(), record, optimizers, keep)
        write_log(self.out_dir / LOG_NAME, self.rows)
        plot_curve(self.out_dir / CURVE_NAME, self.rows)


def train_method(
    method: TrainableMethod,
    samples: Sequence[Sample],
    settings: TrainingSettings,
    out_dir: Path,
    runtime: Runtime,
    geometry: Preprocessing | None = None,
    *,
    config: dict[str, Any] | None = None,
    resume: bool = True,
    progress: bool = True,
    num_workers: int = 0,
    class_names: Mapping[str, str] | None = None,
) -> TrainingResult:
    """Run ``method``'s training phases on ``samples`` (images with masks), epoch by epoch.

    ``config`` (the resolved experiment config) is recorded with the checkpoint; with
    ``resume`` a previous run in ``out_dir`` continues after its last finished epoch (more
    epochs than before extend it; other changed settings are refused). ``class_names`` maps
    categories to the names prompts use (default: the category with spaces).
    """
    import torch

    if not samples:
        raise DataError(
            "There are no samples to train on.",
            "Check the data set root and that its test split (with masks) is present.",
        )
    geometry, out_dir = geometry or method.geometry, _output_folder(out_dir)
    phases = method.training_phases(settings)
    use_scaler = runtime.precision == "fp16" and runtime.device.startswith("cuda")

    def batches(seed: int) -> Iterator[TrainingBatch]:
        names = class_names or {}
        return _batches(samples, geometry, settings, seed, runtime, names, num_workers)

    run = _Training(
        method, settings, phases, runtime, torch.amp.GradScaler("cuda", enabled=use_scaler),
        out_dir, config or {}, batches, batches_per_pass=-(-len(samples) // settings.batch_size),
    )  # fmt: skip
    start_epoch = 0
    if resume and (out_dir / CHECKPOINT_NAME).is_file():
        start_epoch, run.rows, run.epoch_losses = _resume(
            method, settings, out_dir, phases, runtime.device
        )
    run.run_epochs(start_epoch, progress)
    return TrainingResult(
        checkpoint=out_dir / CHECKPOINT_NAME,
        log=out_dir / LOG_NAME,
        curve=out_dir / CURVE_NAME,
        epochs=settings.epochs,
        resumed_from=start_epoch,
        epoch_losses=run.epoch_losses,
    )


def run_training(
    resolved: ResolvedConfig,
    *,
    restart: bool = False,
    progress: bool = True,
    note: Callable[[str], None] = print,
) -> TrainingResult:
    """``ad train``'s flow: every category's test images and masks through ``train_method``.

    Bad files are refused before any model work (as in ``ad eval``), or left out and named
    with ``data.skip_bad_samples``; ``note`` receives those names and the random-weights
    warning. Raises ``DataError`` when no usable image is left or an anomalous image has no
    mask, ``PluginError`` when the method is not trainable.
    """
    from adcore.plugins.registry import get_registry
    from adcore.run.runner import Evaluation, RunOptions

    evaluation = Evaluation(resolved, get_registry(), RunOptions(show_progress=False))
    samples, bad = _training_samples(evaluation)
    built = evaluation.build_method()
    if not isinstance(built, TrainableMethod):
        raise PluginError(
            f"Method {resolved.method.spec.name!r} has nothing to train.",
            "ad train is for trainable methods (see `ad list-plugins`), e.g. afclip.",
        )
    from adcore.run.preparation import skipped_note

    for name in evaluation.categories:  # the files skip_bad_samples left out
        left_out = [b for b in bad if b.sample.category == name]
        if left_out:
            note(f"[yellow]note[/] {name}: {skipped_note(left_out)}")
    if resolved.random_weights:
        note("[yellow]Random weights[/]: the frozen backbone is randomly initialised.")
    return train_method(
        built,
        samples,
        built.training_settings(),
        evaluation.layout.root,
        evaluation.runtime,
        config=resolved.to_dict(),
        resume=not restart,
        progress=progress,
        num_workers=resolved.base.data.num_workers,
        class_names={name: evaluation.dataset.class_name(name) for name in evaluation.categories},
    )


def _training_samples(evaluation: Evaluation) -> tuple[list[Sample], list[BadSample]]:
    """Every category's test samples, screened; each anomalous one must have a mask."""
    from adcore.run.preparation import screen_samples

    data, dataset = evaluation.config.base.data, evaluation.dataset
    samples, bad = screen_samples(  # before any model work, as ad eval does
        [s for name in evaluation.categories for s in dataset.samples(name, "test")],
        data.skip_bad_samples,
        dataset.requires_masks,
        data.max_image_pixels,
    )
    if not samples:
        raise DataError("No usable training images are left.", "Check the data set.")
    unmasked = [s for s in samples if s.label == 1 and s.mask_path is None]
    if unmasked:
        reason = dataset.undefined_levels.get("pixel", "no mask file was found")
        raise DataError(
            f"{len(unmasked)} anomalous training image(s) of data set "
            f"{evaluation.config.dataset.spec.name!r} have no mask (e.g. "
            f"{unmasked[0].image_path}): {reason}. Training would take every pixel of them "
            "as normal.",
            "Train on a data set with defect masks (e.g. MVTec-AD or VisA), or add the masks.",
        )
    return samples, bad

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

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adcore.contracts.dataset import Sample
from adcore.contracts.method import (
    Runtime,
    TrainableMethod,
    TrainingBatch,
    TrainingPhase,
    TrainingSettings,
)
from adcore.contracts.preprocessing import Preprocessing
from adcore.infra.errors import DataError, OutputError
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
    pass


@dataclass
class TrainingResult:
    """Where the outputs are and how the run went; ``epoch_losses`` are mean total losses."""

    checkpoint: Path
    log: Path
    curve: Path
    epochs: int
    resumed_from: int = 0
    epoch_losses: list[float] = field(default_factory=list)


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

    from adcore.infra.progress import Progress

    if not samples:
        raise DataError(
            "There are no samples to train on.",
            "Check the data set root and that its test split (with masks) is present.",
        )
    geometry = geometry or method.geometry
    out_dir = _output_folder(out_dir)
    checkpoint = out_dir / CHECKPOINT_NAME
    log_path, curve_path = out_dir / LOG_NAME, out_dir / CURVE_NAME
    phases = method.training_phases(settings)
    use_scaler = runtime.precision == "fp16" and runtime.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start_epoch, rows, epoch_losses = 0, [], []
    if resume and checkpoint.is_file():
        start_epoch, rows, epoch_losses = _resume(method, settings, out_dir, phases, runtime.device)

    batches_per_pass = -(-len(samples) // settings.batch_size)
    steps_per_epoch = batches_per_pass * len(phases)
    with (
        Progress(enabled=progress) as bars,
        bars.task("training", total=settings.epochs * steps_per_epoch) as advance,
    ):
        if start_epoch:
            bars.note(f"Resuming {out_dir} after epoch {start_epoch}.")
            advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            totals: list[float] = []
            for index, phase in enumerate(phases):
                # One seed per (epoch, phase): a resumed run sees the same order as a straight one.
                seed = settings.seed + epoch * len(phases) + index - (len(phases) - 1)
                data = _batches(
                    samples, geometry, settings, seed, runtime, class_names or {}, num_workers
                )
                first = (epoch - 1) * steps_per_epoch + index * batches_per_pass
                named = {"phase": phase.name} if len(phases) > 1 else {}
                for step, values in enumerate(_run_phase(phase, data, runtime, scaler), start=1):
                    totals.append(values["loss"])
                    rows.append(
                        {"epoch": epoch, "step": step, "global_step": first + step} | named | values
                    )
                    advance(1, status=f"epoch {epoch} {phase.name} loss {values['loss']:.4f}")
            epoch_losses.append(sum(totals) / max(len(totals), 1))
            record = {
                "format": FORMAT,
                "epoch": epoch,
                "settings": settings.model_dump(mode="json"),
                "weights_identity": method.weights_identity(),
                "config": config or {},
                "epoch_losses": epoch_losses,
            }
            optimizers = {phase.name: phase.optimizer.state_dict() for phase in phases}
            keep = epoch in settings.keep_epochs
            save_checkpoint(out_dir, method.trainable_state(), record, optimizers, keep)
            write_log(log_path, rows)
            plot_curve(curve_path, rows)
    return TrainingResult(
        checkpoint=checkpoint,
        log=log_path,
        curve=curve_path,
        epochs=settings.epochs,
        resumed_from=start_epoch,
        epoch_losses=epoch_losses,
    )

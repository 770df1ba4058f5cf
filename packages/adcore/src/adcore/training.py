"""What ``ad train`` keeps for every :class:`TrainableMethod`: data, logging, checkpoints.

The method drives the optimisation: each epoch runs its ``training_phases`` in order, each a
full pass over the data with the phase's own optimiser and step (one Adam phase unless the
method says otherwise). The host shuffles the data (one seed per epoch and phase, so a
resumed run sees the same order), applies mixed precision, and after each epoch writes the
trained tensors atomically to ``checkpoint.safetensors`` with a record of the run (config,
weights identity including the frozen backbone's hash, epoch) in the file's metadata and in
``checkpoint.json``; epochs the method lists in ``keep_epochs`` are also kept as
``checkpoint_epoch<N>.safetensors``. An interrupted run resumes after the last finished
epoch, with every phase's optimiser state.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adcore.dataset import Sample
from adcore.errors import DataError, OutputError, WeightsError
from adcore.method import (
    Runtime,
    TrainableMethod,
    TrainingBatch,
    TrainingPhase,
    TrainingSettings,
)
from adcore.preprocessing import Preprocessing
from adcore.results import atomic_write_bytes, atomic_write_text
from adcore.weights import require_same_weights

if TYPE_CHECKING:
    import torch

CHECKPOINT_NAME = "checkpoint.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
LOG_NAME = "train_log.csv"
CURVE_NAME = "loss_curve.png"
METADATA_KEY = "ad_training"
FORMAT = "ad-trainable/1"
COUNTERS = ("epoch", "step", "global_step")
TEXT_COLUMNS = ("phase",)


@dataclass
class TrainingResult:
    """Where the outputs are and how the run went; ``epoch_losses`` are mean total losses."""

    checkpoint: Path
    log: Path
    curve: Path
    epochs: int
    resumed_from: int = 0
    epoch_losses: list[float] = field(default_factory=list)


def sidecar_path(checkpoint: Path) -> Path:
    """``checkpoint.safetensors`` -> ``checkpoint.json``."""
    return checkpoint.with_suffix(".json")


def checkpoint_metadata(path: Path) -> dict[str, Any]:
    """The training record of a checkpoint: its safetensors metadata, else its sidecar JSON;
    empty when neither exists (a file not written by ``ad train``)."""
    if path.suffix == ".safetensors" and path.is_file():
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
        except Exception as error:
            raise WeightsError(
                f"Checkpoint {path} cannot be read ({type(error).__name__}: {error}).",
                "Point model.checkpoint to a file written by `ad train`.",
            ) from None
        if METADATA_KEY in metadata:
            return json.loads(metadata[METADATA_KEY])
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        return json.loads(sidecar.read_text())
    return {}


def epoch_checkpoint_name(epoch: int) -> str:
    """The file an epoch listed in ``keep_epochs`` is kept under."""
    return f"checkpoint_epoch{epoch}.safetensors"


def _save_checkpoint(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    record: dict[str, Any],
    optimizer_state: dict[str, Any],
    keep: bool = False,
) -> None:
    import torch
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    text = json.dumps(record, default=str)
    payload = save(tensors, metadata={METADATA_KEY: text})
    sidecar = json.dumps(record, indent=2, default=str).encode()
    names = [CHECKPOINT_NAME] + ([epoch_checkpoint_name(record["epoch"])] if keep else [])
    for name in names:
        atomic_write_bytes(out_dir / name, payload)
        atomic_write_bytes(sidecar_path(out_dir / name), sidecar)
    buffer = io.BytesIO()
    torch.save(optimizer_state, buffer)
    atomic_write_bytes(out_dir / OPTIMIZER_NAME, buffer.getvalue())


def _write_log(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewritten whole at each epoch end, so it never holds an unfinished epoch."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def _read_log(path: Path, last_epoch: int) -> list[dict[str, float]]:
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        rows = [
            {
                k: int(v) if k in COUNTERS else v if k in TEXT_COLUMNS else float(v)
                for k, v in row.items()
                if v != ""
            }
            for row in csv.DictReader(handle)
        ]
    return [row for row in rows if row.get("epoch", 0) <= last_epoch]


def _plot_curve(path: Path, rows: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    parts = [key for key in rows[0] if key not in COUNTERS + TEXT_COLUMNS]
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = [row["global_step"] for row in rows]
    for part in parts:
        axis.plot(steps, [row.get(part, float("nan")) for row in rows], label=part)
    axis.set_xlabel("step")
    axis.set_ylabel("loss")
    axis.set_title("training loss")
    axis.legend()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


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

    from adcore.weights import load_checkpoint

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
    log = _read_log(out_dir / LOG_NAME, epoch)
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
    from adcore.loading import make_loader

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

    from adcore.progress import Progress

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
            _save_checkpoint(out_dir, method.trainable_state(), record, optimizers, keep)
            _write_log(log_path, rows)
            _plot_curve(curve_path, rows)
    return TrainingResult(
        checkpoint=checkpoint,
        log=log_path,
        curve=curve_path,
        epochs=settings.epochs,
        resumed_from=start_epoch,
        epoch_losses=epoch_losses,
    )

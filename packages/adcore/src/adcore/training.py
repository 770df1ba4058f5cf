"""The training loop of ``ad train``, the same for every :class:`TrainableMethod`.

Only the method's trainable parameters are optimised (Adam with the method's learning rate
and betas). After each epoch the trained tensors are written atomically to
``checkpoint.safetensors`` with a record of the run (config, weights identity including the
frozen backbone's hash, epoch) in the file's metadata and in ``checkpoint.json``; an
interrupted run resumes after the last finished epoch, with the optimiser state it had.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adcore.dataset import Sample
from adcore.errors import DataError, OutputError, WeightsError
from adcore.method import Runtime, TrainableMethod, TrainingSettings
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


def _save_checkpoint(
    out_dir: Path,
    state: dict[str, torch.Tensor],
    record: dict[str, Any],
    optimizer_state: dict[str, Any],
) -> None:

    import torch
    from safetensors.torch import save

    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    text = json.dumps(record, default=str)
    atomic_write_bytes(out_dir / CHECKPOINT_NAME, save(tensors, metadata={METADATA_KEY: text}))
    sidecar = json.dumps(record, indent=2, default=str).encode()
    atomic_write_bytes(sidecar_path(out_dir / CHECKPOINT_NAME), sidecar)
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
            {k: int(v) if k in COUNTERS else float(v) for k, v in row.items() if v != ""}
            for row in csv.DictReader(handle)
        ]
    return [row for row in rows if row.get("epoch", 0) <= last_epoch]


def _plot_curve(path: Path, rows: list[dict[str, float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    parts = [key for key in rows[0] if key not in COUNTERS]
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
) -> TrainingResult:
    """Optimise ``method``'s trainable parameters on ``samples`` (images with masks).

    ``config`` (the resolved experiment config) is recorded with the checkpoint; with
    ``resume`` a previous run in ``out_dir`` continues after its last finished epoch (more
    epochs than before extend it; other changed settings are refused).
    """
    import torch

    from adcore.loading import make_loader
    from adcore.progress import Progress

    if not samples:
        raise DataError(
            "There are no samples to train on.",
            "Check the data set root and that its test split (with masks) is present.",
        )
    geometry = geometry or method.geometry
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(
            f"Cannot create {out_dir} ({error}).", "Choose a writable folder."
        ) from None
    checkpoint = out_dir / CHECKPOINT_NAME
    log_path, curve_path = out_dir / LOG_NAME, out_dir / CURVE_NAME

    parameters = list(method.trainable_parameters())
    optimizer = torch.optim.Adam(parameters, lr=settings.learning_rate, betas=settings.betas)
    use_scaler = runtime.precision == "fp16" and runtime.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)

    start_epoch, rows, epoch_losses = 0, [], []
    if resume and checkpoint.is_file():
        record = checkpoint_metadata(checkpoint)
        start_epoch = int(record.get("epoch", 0))
        recorded_settings = {**(record.get("settings") or {}), "epochs": settings.epochs}
        if record.get("settings") and recorded_settings != settings.model_dump(mode="json"):
            raise OutputError(
                f"{out_dir} holds a training run with other settings ({record.get('settings')}).",
                "Use another experiment name, or delete the folder to start over.",
            )
        require_same_weights(
            record.get("weights_identity"),
            method.weights_identity(),
            f"The training run in {out_dir} was made",
            "Use another experiment name, or delete the folder to start over.",
        )
        from adcore.weights import load_checkpoint

        method.load_trainable_state(load_checkpoint(checkpoint))
        optimizer_file = out_dir / OPTIMIZER_NAME
        if optimizer_file.is_file():
            optimizer.load_state_dict(
                torch.load(optimizer_file, map_location=runtime.device, weights_only=True)
            )
        rows = _read_log(log_path, start_epoch)
        epoch_losses = list(record.get("epoch_losses", []))[:start_epoch]

    steps_per_epoch = -(-len(samples) // settings.batch_size)
    with (
        Progress(enabled=progress) as bars,
        bars.task("training", total=settings.epochs * steps_per_epoch) as advance,
    ):
        if start_epoch:
            bars.note(f"Resuming {out_dir} after epoch {start_epoch}.")
            advance(start_epoch * steps_per_epoch)
        for epoch in range(start_epoch + 1, settings.epochs + 1):
            # A fresh seed per epoch makes the order after a resume the same as without one.
            loader = make_loader(
                samples,
                geometry,
                settings.batch_size,
                num_workers=num_workers,
                shuffle=True,
                seed=settings.seed + epoch,
                pin_memory=runtime.device.startswith("cuda"),
            )
            totals: list[float] = []
            for step, batch in enumerate(loader, start=1):
                images = batch["image"].to(runtime.device, non_blocking=True)
                masks = batch["mask"].to(runtime.device, non_blocking=True).float()
                labels = batch["label"].to(runtime.device)
                with runtime.autocast():
                    losses = method.training_loss(images, masks, labels)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(losses["loss"]).backward()
                scaler.step(optimizer)
                scaler.update()
                values = {name: float(value.detach()) for name, value in losses.items()}
                totals.append(values["loss"])
                rows.append(
                    {
                        "epoch": epoch,
                        "step": step,
                        "global_step": (epoch - 1) * steps_per_epoch + step,
                        **values,
                    }
                )
                advance(1, status=f"epoch {epoch} loss {values['loss']:.4f}")
            epoch_losses.append(sum(totals) / max(len(totals), 1))
            record = {
                "format": FORMAT,
                "epoch": epoch,
                "settings": settings.model_dump(mode="json"),
                "weights_identity": method.weights_identity(),
                "config": config or {},
                "epoch_losses": epoch_losses,
            }
            _save_checkpoint(out_dir, method.trainable_state(), record, optimizer.state_dict())
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

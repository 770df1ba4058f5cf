"""``ad train``'s log: ``train_log.csv`` (one row per epoch and phase) and ``loss_curve.png``."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING

from adcore.infra.files import atomic_write_bytes, atomic_write_text

if TYPE_CHECKING:
    pass


LOG_NAME = "train_log.csv"
CURVE_NAME = "loss_curve.png"
COUNTERS = ("epoch", "step", "global_step")
TEXT_COLUMNS = ("phase",)


def write_log(path: Path, rows: list[dict[str, float]]) -> None:
    """Rewritten whole at each epoch end, so it never holds an unfinished epoch."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def read_log(path: Path, last_epoch: int) -> list[dict[str, float]]:
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


def plot_curve(path: Path, rows: list[dict[str, float]]) -> None:
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

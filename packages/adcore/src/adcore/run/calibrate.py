"""``ad calibrate``: set a model's thresholds from good parts and write ``threshold.json``.

The rules, their confidence and the file are :mod:`ad_runtime.thresholds`; the scoring loop
is :func:`ad_runtime.calibration.calibrate`, fed by the run's fitted PyTorch method
(:class:`~adcore.run.run_model.RunModel`, ``--run``) or by the bundle through the
torch-free runtime (``--model``). The file goes into the run's category folder or the
bundle folder, where ``ad predict``, ``ad export``, ``ad-runtime`` and ``ad serve`` read it.
"""

from __future__ import annotations

from pathlib import Path

from ad_runtime.calibration import calibrate, calibrate_bundle
from ad_runtime.predictions import find_images
from ad_runtime.thresholds import Calibration, Rule, write_calibration
from adcore.infra.progress import Progress


def calibrate_model(
    normal_inputs: list[Path],
    rule: Rule,
    run_dir: Path | None = None,
    category: str | None = None,
    bundle: Path | None = None,
    defect_inputs: list[Path] | None = None,
    pixel_fpr: float | None = 0.001,
    batch_size: int = 8,
    device: str = "auto",
    progress: Progress | None = None,
) -> tuple[Calibration, Path]:
    """Score the good images (and defects) with the run's category or the bundle, choose the
    thresholds by ``rule`` (pixel: ``pixel_fpr``, None for none) and write
    ``threshold.json``; returns the calibration and the file's path.

    Raises ``DataError`` for unreadable images (every one named), a run without the fitted
    model, or a rule without the defects it needs."""
    progress = progress or Progress(enabled=False)
    defect_inputs = defect_inputs or []
    normal = find_images(normal_inputs)
    defects = find_images(defect_inputs) if defect_inputs else []
    with progress.task("calibrate", len(normal) + len(defects)) as advance:
        if bundle is not None:
            return calibrate_bundle(
                bundle, normal_inputs, rule, defect_inputs, pixel_fpr, batch_size,
                advance=advance,
            )  # fmt: skip
        from adcore.run.run_model import RunModel

        assert run_dir is not None
        model = RunModel(run_dir, category, device)
        calibration = calibrate(
            model.batches, model.identity, normal, normal_inputs, rule, model.map_pixels,
            defects, defect_inputs, pixel_fpr, batch_size, advance,
        )  # fmt: skip
        return calibration, write_calibration(model.folder, calibration)

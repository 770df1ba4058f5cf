"""Before the units: train each checkpoint that pending points need and that is not finished.

The cross-dataset protocol of trainable zero-shot methods (AF-CLIP: train on VisA, test on
MVTec-AD; train on MVTec-AD, test on the rest) is a sweep whose ``train`` entries name the
training runs. Each is run through ``ad train`` itself, from a config file written next to
the sweep summary, so it writes, resumes and refuses exactly as a hand-run ``ad train`` would.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from rich.console import Console

from adcore.infra.errors import AdError
from adcore.infra.files import atomic_write_text
from adcore.infra.progress import Progress
from adcore.sweep.plan import Plan, absolute_paths
from adcore.sweep.spec import Sweep, Training


def finished(checkpoint: Path) -> bool:
    """The checkpoint exists and, when ``ad train`` wrote it, holds its last epoch."""
    from adcore.toolkit.trained import checkpoint_metadata

    if not checkpoint.is_file():
        return False
    record = checkpoint_metadata(checkpoint)
    epochs = (record.get("settings") or {}).get("epochs")
    return epochs is None or int(record.get("epoch", 0)) >= int(epochs)


def needed_trainings(sweep: Sweep, plan: Plan) -> list[Training]:
    """Training entries whose checkpoint a pending point evaluates with, in file order."""
    needed: dict[str, Training] = {}
    for experiment in plan.experiments:
        training = sweep.training_for(experiment.point)
        if training is None or not experiment.pending:
            continue
        used = (experiment.raw.get("model") or {}).get("checkpoint")
        if used == str(sweep.checkpoint(training)):
            needed.setdefault(training.name, training)
    return list(needed.values())


def train_missing(sweep: Sweep, plan: Plan, progress: Progress) -> list[Path]:
    """Run ``ad train`` for every needed checkpoint that is missing or unfinished."""
    from adcore.config.files import build_raw_config
    from adcore.config.resolve import resolve_raw
    from adcore.plugins.registry import get_registry
    from adcore.run.training import model_options, run_training

    console = Console()  # what ad train itself prints, on stdout, also without progress

    def say(text: str) -> None:
        console.print(text, highlight=False)

    trained = []
    for training in needed_trainings(sweep, plan):
        checkpoint = sweep.checkpoint(training)
        if finished(checkpoint):
            progress.note(f"Training {training.name}: finished earlier ({checkpoint}).")
            continue
        raw = absolute_paths(sweep.training_config(training))
        config_file = plan.output_root / "sweeps" / sweep.name / "train" / f"{training.name}.yaml"
        atomic_write_text(config_file, yaml.safe_dump(raw, sort_keys=False))
        progress.note(f"Training {training.name} first: {checkpoint} is missing or unfinished.")
        try:
            where: dict[str, str] = {}
            raw = build_raw_config(config_file, locations=where)
            resolved = resolve_raw(raw, get_registry(), False, where)
            result = run_training(resolved, progress=progress.enabled, note=say)
            for line in result.summary(resolved.method.spec.name, model_options(resolved)):
                say(line)
        except AdError as error:
            raise type(error)(
                f"Training {training.name} of sweep {sweep.name}: {error.problem}", error.hint
            ) from None
        trained.append(checkpoint)
    return trained

"""``ad predict --watch DIR``: the watched folder of :mod:`ad_runtime.watch`, scored by a
run's fitted method (``--run``) or a bundle through the runtime (``--model``), under the
threshold ``ad predict`` uses (given, calibrated, else the run's or the bundle's)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ad_runtime.watch import DEFAULT_POLL_S, Watcher, WatchOutcome, check_bounds


def watch_folder(
    folder: Path,
    out_dir: Path,
    run_dir: Path | None = None,
    bundle: Path | None = None,
    category: str | None = None,
    threshold: float | None = None,
    device: str = "auto",
    batch_size: int = 8,
    idle_timeout: float | None = None,
    max_images: int | None = None,
    poll_s: float = DEFAULT_POLL_S,
    report: Callable[[str], None] | None = None,
) -> WatchOutcome:
    """Watch ``folder`` and score what appears into ``out_dir`` until a bound or Ctrl-C.

    Raises ``UsageError`` for a bound not above 0, ``DataError`` for a folder that is not
    one or a model that cannot be loaded."""
    check_bounds(idle_timeout, max_images, poll_s)
    if bundle is not None:
        from ad_runtime.model import Model

        model = Model(bundle, threshold)
        batches, verdicts = model.batches, model.verdicts
        identity = f"bundle {model.bundle.graph_sha256}"
    else:
        from adcore.contracts.method import TransductiveMethod
        from adcore.infra.errors import UsageError
        from adcore.run.run_model import RunModel

        assert run_dir is not None
        fitted = RunModel(run_dir, category, device)
        if isinstance(fitted.method, TransductiveMethod):
            raise UsageError(
                f"{fitted.config.method.spec.name} is transductive: it scores a set of images "
                "jointly, so images scored batch by batch as they arrive would get other "
                "scores than ad eval gives them.",
                "Collect the images in a folder and score them together with "
                "ad predict --run RUN --input FOLDER.",
            )
        batches, verdicts = fitted.batches, fitted.verdicts(threshold)
        identity = "run " + json.dumps(fitted.identity, sort_keys=True, default=str)
    watcher = Watcher(
        folder, out_dir, batches, verdicts, batch_size, True, poll_s, report, identity
    )
    return watcher.run(idle_timeout, max_images)

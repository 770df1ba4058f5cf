"""A run's fitted PyTorch method behind the runtime model's ``batches`` interface, so that
the loops written for bundles (calibration, the watched folder in :mod:`ad_runtime`) score
with it unchanged: the method rebuilt and loaded as ``ad predict --run`` does, the same
screening, decoding and prediction loop."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ad_runtime.predictions import Verdicts
from ad_runtime.scorescale import ScoreScale
from adcore.run.predict import load_method, pick_category, run_decision, run_identity


class RunModel:
    """``category`` of the run ``run_dir`` (``ad eval --save-model``), fitted and loaded.

    Raises ``DataError`` for a run without the category or its fitted state, or whose
    weights differ from those it was fitted with."""

    def __init__(self, run_dir: Path, category: str | None, device: str = "auto") -> None:
        self.run_dir = run_dir
        self.category = pick_category(run_dir, category)
        self.config, self.method, self.runtime = load_method(run_dir, self.category, device)
        self.identity: dict[str, Any] = run_identity(run_dir, self.category, self.config)

    @property
    def folder(self) -> Path:
        """Where the category's files (and its ``threshold.json``) live."""
        return self.run_dir / self.category

    @property
    def map_pixels(self) -> int:
        return self.method.geometry.output_size**2

    def verdicts(self, threshold: float | None = None) -> Verdicts:
        """The decision rule ``ad predict --run`` applies (given, calibrated, else the run's
        F1-optimal threshold) with the run's score scale."""
        from adcore.run.predict import run_test_scores

        decision, source, _ = run_decision(self.run_dir, self.category, self.config, threshold)
        scale = ScoreScale.from_scores(run_test_scores(self.run_dir, self.category)[0], decision)
        return Verdicts(self.category, decision, source, scale)

    def batches(
        self, paths: Sequence[Path], batch_size: int = 8
    ) -> Iterator[tuple[range, np.ndarray, np.ndarray]]:
        """(positions in ``paths``, raw scores [b], raw maps [b,S,S]) batch by batch, as
        :meth:`ad_runtime.model.Model.batches`. Raises ``DataError`` naming every
        unreadable file before any is scored."""
        from adcore.run.predict import fitted_decoding, screened_samples
        from adcore.run.prediction_pass import predicted_batches

        data = self.config.base.data
        images = [(Path(p), str(i)) for i, p in enumerate(paths)]
        samples = screened_samples(images, self.category, data.max_image_pixels)
        decoding, _ = fitted_decoding(self.run_dir, self.category, list(paths), data)
        name = self.config.method.spec.name
        for batch in predicted_batches(
            self.method, self.runtime, samples, batch_size, 0, name, decoding
        ):
            index = batch.index
            yield range(int(index[0]), int(index[-1]) + 1), batch.scores, batch.maps

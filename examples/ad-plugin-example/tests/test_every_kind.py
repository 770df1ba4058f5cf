"""The data set, metric and reporter of the example plugin: the host's contract checks, an
independent computation of the metric, and one ``ad eval`` that uses all four components."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ad_plugin_example import adcore_datasets, adcore_metrics, adcore_reporters
from adcore.api import EvalData
from adcore.testing import check_dataset, check_records

AD = Path(sys.executable).parent / "ad"


def write_flat_tree(root: Path, size: int = 32) -> Path:
    """One category: 4 train, 3 good and 3 bad images (a bright square, its 0/255 mask)."""
    rng = np.random.default_rng(0)
    folder = root / "tile"
    for name in ("train", "good", "bad", "masks"):
        (folder / name).mkdir(parents=True)

    def normal() -> np.ndarray:
        return rng.integers(110, 140, (size, size, 3), dtype=np.uint8)

    for split, count in (("train", 4), ("good", 3)):
        for i in range(count):
            Image.fromarray(normal()).save(folder / split / f"{i:03d}.png")
    for i in range(3):
        image, mask = normal(), np.zeros((size, size), np.uint8)
        image[8 : 12 + 2 * i, 8:16] = 255
        mask[8 : 12 + 2 * i, 8:16] = 255
        Image.fromarray(image).save(folder / "bad" / f"{i:03d}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{i:03d}.png")
    return root


def test_records_pass_the_host_contract():
    for hook in (adcore_datasets, adcore_metrics, adcore_reporters):
        check_records(hook())


def test_dataset_lists_the_tree(tmp_path):
    (spec,) = adcore_datasets()
    dataset = check_dataset(spec, write_flat_tree(tmp_path))
    test = dataset.samples("tile", "test")
    assert [s.label for s in test] == [1, 1, 1, 0, 0, 0]  # bad/ sorts before good/
    assert all(s.mask_path.exists() for s in test if s.label == 1)


def brute_force_recall(scores: np.ndarray, labels: np.ndarray, fpr: float) -> float:
    """Every score (and -inf) as the threshold ``score > t``; the best recall whose
    false-positive rate stays within ``fpr``."""
    thresholds = np.concatenate([[-np.inf], scores])[:, None]  # [T,1]
    flagged = scores[None] > thresholds  # [T,N]
    rates = flagged[:, labels == 0].mean(1)  # [T]
    recalls = flagged[:, labels == 1].mean(1)  # [T]
    return float(recalls[rates <= fpr].max())


@pytest.mark.parametrize("fpr", [0.0, 0.05, 0.2, 0.5, 1.0])
def test_recall_at_fpr_equals_a_search_over_every_threshold(fpr):
    (spec,) = adcore_metrics()
    compute = spec.factory(spec.config(fpr=fpr))
    rng = np.random.default_rng(1)
    for _ in range(20):
        labels = rng.integers(0, 2, 40)
        labels[:2] = [0, 1]
        scores = rng.integers(0, 12, 40).astype(float)  # ties on purpose
        data = EvalData(scores=scores, labels=labels, maps=None, masks=None)
        assert compute(data) == brute_force_recall(scores, labels, fpr)


def run_eval(root: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [str(AD), "eval", "--method", "pixel-gaussian", "--dataset", "flat-folders"]
    args += ["--data-root", str(root), "--output", str(out), "--device", "cpu"]
    args += ["--set", "model.resolution=32", "--set", "data.num_workers=0"]
    args += ["--set", "evaluation.metrics=[image_auroc,image_recall_at_fpr]", *extra]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def test_one_eval_runs_the_four_examples_and_the_chosen_reporters(tmp_path):
    root = write_flat_tree(tmp_path / "data")
    chosen = run_eval(root, tmp_path / "a", "--reporter", "default", "--reporter", "top-scores")
    assert chosen.returncode == 0, chosen.stderr
    (run,) = (tmp_path / "a").glob("flat-folders/pixel-gaussian/*")
    with (run / "tile" / "scores.csv").open() as stream:
        rows = list(csv.DictReader(stream))
    scores = np.array([float(r["score"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    with (run / "tile" / "metrics.csv").open() as stream:
        metrics = next(csv.DictReader(stream))
    assert float(metrics["image_recall_at_fpr"]) == brute_force_recall(scores, labels, 0.05)
    top = (run / "tile" / "top_scores.csv").read_text().splitlines()[1:]
    expected = [rows[i]["path"] for i in np.argsort(-scores, kind="stable")[:5]]
    assert [line.split(",", 2)[2] for line in top] == expected
    assert (run / "categories.txt").read_text().startswith("tile: image_auroc ")
    assert json.loads((run / "summary.json").read_text())["dataset"] == "flat-folders"

    plain = run_eval(root, tmp_path / "b")  # not chosen: a non-default reporter does not run
    assert plain.returncode == 0, plain.stderr
    (run,) = (tmp_path / "b").glob("flat-folders/pixel-gaussian/*")
    assert (run / "summary.json").exists() and not (run / "tile" / "top_scores.csv").exists()


def test_an_unknown_reporter_is_a_usage_error_listing_the_reporters(tmp_path):
    result = run_eval(write_flat_tree(tmp_path / "data"), tmp_path / "a", "--reporter", "top")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "Unknown reporter 'top'" in result.stderr and "top-scores" in result.stderr

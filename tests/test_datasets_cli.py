"""The data sets through the real `ad` command: eval on VisA and folder trees, data check."""

from __future__ import annotations

import csv
import json

from adtest import eval_args, fast_flags, run_ad
from test_datacheck import write_tree
from test_datasets_folder import write_normal_abnormal
from test_datasets_visa import COUNTS, write_visa

FAST = fast_flags(resolution=16)


def _summary(run_dir):
    with (run_dir / "summary_metrics.csv").open() as stream:
        return {row["category"]: row for row in csv.DictReader(stream)}


def test_eval_on_a_visa_tree(tmp_path):
    root = write_visa(tmp_path / "visa")
    result = run_ad(*eval_args(root, tmp_path / "out", "1", "visa"), *FAST)
    assert result.returncode == 0, result.stderr
    rows = _summary(tmp_path / "out/visa/pixel-gaussian/default")
    assert set(rows) == {*COUNTS, "mean"}
    for category, (_, n_good, n_bad) in COUNTS.items():
        metrics = tmp_path / f"out/visa/pixel-gaussian/default/{category}/metrics.csv"
        row = next(csv.DictReader(metrics.open()))
        assert (int(row["num_test"]), int(row["num_anomalous"])) == (n_good + n_bad, n_bad)
        assert 0.0 <= float(rows[category]["pixel_auroc"]) <= 1.0


def test_eval_on_a_folder_without_masks_reports_pixel_metrics_as_missing(tmp_path):
    root = write_normal_abnormal(tmp_path / "parts", masks=False)
    result = run_ad(*eval_args(root, tmp_path / "out", "2", "folder"), *FAST)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out/folder/pixel-gaussian/default/summary.json").read_text())
    (category,) = summary["categories"]
    assert category["num_anomalous"] == 4
    assert 0.0 <= category["metrics"]["image_auroc"] <= 1.0
    assert category["metrics"]["pixel_auroc"] is None  # NaN: JSON has no NaN
    with (tmp_path / "out/folder/pixel-gaussian/default/summary_metrics_pretty.csv").open() as f:
        pretty = next(csv.DictReader(f))
    assert pretty["pixel_auroc"] == "n/a"


def test_a_missing_mask_stops_the_run_or_is_skipped_and_counted(tmp_path):
    root = write_normal_abnormal(tmp_path / "parts", masks=True)  # d1 has no mask
    args = [*eval_args(root, tmp_path / "out", "2", "folder"), *FAST]
    stopped = run_ad(*args)
    assert stopped.returncode == 1
    assert "d1" in stopped.stderr and "--skip-bad-samples" in stopped.stderr
    assert not (tmp_path / "out/folder/pixel-gaussian/default/summary.json").exists()

    skipped = run_ad(*args, "--skip-bad-samples")
    assert skipped.returncode == 0, skipped.stderr
    run_dir = tmp_path / "out/folder/pixel-gaussian/default"
    row = next(csv.DictReader((run_dir / "parts/metrics.csv").open()))
    assert int(row["num_skipped"]) == 1 and int(row["num_anomalous"]) == 3
    assert json.loads((run_dir / "env.json").read_text())["skip_bad_samples"] is True


def test_data_check_names_each_bad_file_and_fails(tmp_path):
    root = write_tree(tmp_path / "bad")
    result = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(root), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    text = result.stdout
    for name in ("train/good/1.png", "test/good/1.png", "test/good/2.jpg",
                 "ground_truth/dent/1_mask.png", "ground_truth/crack/0_mask.png",
                 "ground_truth/crack/1_mask.png"):  # fmt: skip
        assert name in text, name
    clean = run_ad("data", "check", "--dataset", "mvtec", "--data-root", str(root),
                   "--category", "clean")  # fmt: skip
    assert clean.returncode == 0, clean.stdout + clean.stderr

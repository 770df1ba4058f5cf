"""``ad calibrate``: thresholds from good parts (``ad_runtime.thresholds``), checked against
hand calculations and an independent F1 threshold; ``threshold.json`` picked up by
``ad predict --run``, ``ad export``, ``ad predict --model`` and ``ad-runtime predict``, and
refused when it was made for another model."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from ad_runtime.cli import main as runtime_main
from ad_runtime.errors import DataError, UsageError
from ad_runtime.thresholds import (
    THRESHOLD_FILE,
    PixelTail,
    Rule,
    choose_image_threshold,
    fpr_upper_bound,
    images_for_confidence,
    images_to_resolve,
    parse_rule,
    sample_size_warnings,
)
from adtest import run_ad
from test_export import _export, data, gaussian_run  # noqa: F401

GOOD = np.array([0.5, 0.2, 1.0, 0.7, 0.1, 0.9, 0.4, 0.8, 0.3, 0.6])  # 0.1 .. 1.0, shuffled


def test_fpr_rule_against_a_hand_calculation():
    """fpr 0.2 with 95 % confidence on 10 good scores: the Clopper-Pearson bound for 0 false
    positives of 10 is 1 - 0.05^(1/10) = 0.259 > 0.2, so the threshold goes just above the
    highest good score and a warning says how many images the target needs; the quantile
    rule (no confidence asked) lets 2 through at 0.8."""
    level = choose_image_threshold(GOOD, Rule("fpr", 0.2))
    assert level.value == np.nextafter(1.0, np.inf) and level.achieved.false_positives == 0
    assert level.achieved.fpr_upper == pytest.approx(1 - 0.05 ** (1 / 10), rel=1e-12)
    assert level.source == "calibrated: fpr 0.2 on 10 good images"
    warning = sample_size_warnings(level, Rule("fpr", 0.2))
    assert len(warning) == 1 and "at most 0.259" in warning[0]
    assert "14 good images" in warning[0]  # 0.8^14 = 0.044 <= 0.05 < 0.8^13 = 0.055
    # 80 good scores 1..80 at fpr 0.1: the bound for 3 of 80 is 0.0941 <= 0.1, for 4 of 80
    # 0.1108 > 0.1 (Beta(4, 77) and Beta(5, 76) at 0.95), so 3 pass: just above 77
    scores = np.arange(1.0, 81.0)[::-1].copy()
    assert stats.beta.ppf(0.95, 4, 77) <= 0.1 < stats.beta.ppf(0.95, 5, 76)
    level = choose_image_threshold(scores, Rule("fpr", 0.1))
    assert level.value == np.nextafter(77.0, np.inf) and level.achieved.false_positives == 3
    assert level.achieved.fpr_upper == pytest.approx(stats.beta.ppf(0.95, 4, 77), rel=1e-9)
    assert sample_size_warnings(level, Rule("fpr", 0.1)) == []


def test_clopper_pearson_bound_and_the_images_a_rate_needs():
    for k, n in ((1, 10), (3, 1000), (40, 500), (0, 2995)):
        expected = stats.beta.ppf(0.95, k + 1, n - k)
        assert fpr_upper_bound(k, n) == pytest.approx(expected, rel=1e-9)
    assert images_to_resolve(0.001) == 1000 and images_to_resolve(0.01) == 100
    # (1 - 0.001)^n <= 0.05  <=>  n >= ln 0.05 / ln 0.999 = 2994.2
    assert images_for_confidence(0.001) == 2995 == math.ceil(math.log(0.05) / math.log(0.999))
    assert fpr_upper_bound(0, 2995) <= 0.001 < fpr_upper_bound(0, 2994)
    rule = Rule("fpr", 0.001)
    few = sample_size_warnings(choose_image_threshold(GOOD, rule), rule)
    assert len(few) == 1 and "cannot resolve" in few[0] and "1000" in few[0] and "2995" in few[0]
    rng = np.random.default_rng(0)
    loose = sample_size_warnings(choose_image_threshold(rng.normal(size=1500), rule), rule)
    assert len(loose) == 1 and "at most" in loose[0] and "2995" in loose[0]
    enough = choose_image_threshold(rng.normal(size=10000), rule)
    assert sample_size_warnings(enough, rule) == [] and enough.achieved.fpr_upper <= 0.001
    assert 1 <= enough.achieved.false_positives < 10  # the bound allows some, fewer than F n


def test_quantile_recall_and_f1_rules():
    from adcore.metrics import image_f1_threshold

    quantile = choose_image_threshold(GOOD, Rule("quantile", 0.5))
    assert quantile.value == pytest.approx(0.55, abs=1e-15)  # midway between 0.5 and 0.6
    assert quantile.achieved.false_positives == 5
    defects = np.array([0.95, 2.0, 3.0, 4.0])
    recall = choose_image_threshold(GOOD, Rule("recall", 0.75), defects)
    assert recall.value == 2.0 and recall.achieved.recall == 0.75  # the 3rd highest of 4
    assert recall.achieved.false_positives == 0
    rng = np.random.default_rng(1)
    for _ in range(20):
        good, bad = rng.normal(size=50).round(1), rng.normal(1.0, size=12).round(1)  # with ties
        labels = np.r_[np.zeros(50), np.ones(12)]
        f1 = choose_image_threshold(good, Rule("f1", None), bad)
        assert f1.value == image_f1_threshold(np.r_[good, bad], labels)
        assert f1.source.startswith("calibrated: F1-optimal")


def test_pixel_tail_equals_the_full_sort():
    """The kept tail gives the threshold a sort of every good pixel gives."""
    rng = np.random.default_rng(2)
    maps = rng.gamma(2.0, size=(7, 16, 16)).astype(np.float32)
    tail = PixelTail(0.01, maps.size)
    for start in range(0, 7, 3):
        tail.add(maps[start : start + 3])
    level = tail.threshold(7)
    everything = np.sort(maps.reshape(-1).astype(np.float64))[::-1]
    allowed = math.floor(0.01 * maps.size)  # 17 of 1792
    assert level.value == np.nextafter(everything[allowed], np.inf)
    assert level.achieved.false_positives == int(np.sum(everything >= level.value)) <= allowed
    assert tail.values.size == allowed + 1


def test_rule_options_are_checked():
    assert parse_rule() == Rule("fpr", 0.001)
    with pytest.raises(UsageError, match="one rule at a time"):
        parse_rule(fpr=0.01, quantile=0.99)
    with pytest.raises(UsageError, match="outside"):
        parse_rule(fpr=1.5)
    with pytest.raises(UsageError, match="--defects"):
        parse_rule(recall=0.9)
    with pytest.raises(DataError, match="needs defect scores"):
        choose_image_threshold(GOOD, Rule("f1", None), np.array([]))


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as stream:
        return list(csv.DictReader(stream))


@pytest.fixture
def run(gaussian_run, tmp_path) -> Path:  # noqa: F811
    """A copy of the saved run, so that each test's threshold.json stays its own."""
    return Path(shutil.copytree(gaussian_run, tmp_path / "run"))


def _predict(flag: str, source: Path, images: Path, out: Path) -> list[dict[str, str]]:
    extra = ["--category", "plate"] if flag == "--run" else []
    result = run_ad(
        "predict", flag, str(source), *extra, "--input", str(images), "--out", str(out),
        "--no-overlays",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return _rows(out / "scores.csv")


def test_calibrated_threshold_is_used_by_predict_export_and_the_runtime(run, data, tmp_path):  # noqa: F811
    """calibrate --run (quantile 0.4 of the good test images): threshold.json records the
    rule, the images and the run's identity; ad predict --run then flags what scores at or
    above it (a good image among them, which the run's F1 threshold kept normal); ad export
    carries it into bundle.json; calibrate --model writes the bundle's own, which ad predict
    --model and ad-runtime predict use."""
    test = data / "plate/test"
    before = _predict("--run", run, test, tmp_path / "before")
    assert {r["threshold_source"] for r in before} == {"F1-optimal on the run's test set"}
    result = run_ad(
        "calibrate", "--run", str(run), "--category", "plate", "--normal", str(test / "good"),
        "--quantile", "0.4", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "quantile 0.4 of 3 good images): 2 of 3 good images at or above" in result.stdout
    written = json.loads((run / "plate" / THRESHOLD_FILE).read_text())
    assert written["image"]["rule"] == "quantile" and written["image"]["target"] == 0.4
    assert written["normal_images"]["count"] == 3 and len(written["normal_images"]["sha256"]) == 64
    assert written["model"]["kind"] == "run" and written["pixel"]["rule"] == "fpr"
    good = sorted(float(r["score"]) for r in before if "/good/" in r["path"])
    # numpy's linear quantile: 0.4 of the way 0..2 is 0.8 from the lowest to the middle
    expected = good[0] + 0.8 * (good[1] - good[0])
    assert written["image"]["value"] == pytest.approx(expected, rel=1e-6, abs=1e-6 * good[1])

    after = _predict("--run", run, test, tmp_path / "after")
    value = written["image"]["value"]
    for row in after:
        assert float(row["threshold"]) == value
        assert row["anomalous"] == str(int(float(row["score"]) >= value))
        assert row["threshold_source"] == "calibrated: quantile 0.4 of 3 good images"
    flagged = {r["path"] for r in after if r["anomalous"] == "1"}
    assert flagged != {r["path"] for r in before if r["anomalous"] == "1"}
    assert any("/good/" in path for path in flagged)

    bundle = tmp_path / "bundle"
    assert _export(run, bundle).returncode == 0
    thresholds = json.loads((bundle / "bundle.json").read_text())["thresholds"]
    assert thresholds["image"] == {"value": value, "source": written["image"]["source"]}
    assert thresholds["pixel"]["value"] == written["pixel"]["value"]
    through_bundle = _predict("--model", bundle, test, tmp_path / "bundle-out")
    assert [r["anomalous"] for r in through_bundle] == [r["anomalous"] for r in after]

    result = run_ad("calibrate", "--model", str(bundle), "--normal", str(test / "good"),
                    "--fpr", "0.001", "--no-progress")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Warning: 3 good images cannot resolve" in result.stdout
    own = json.loads((bundle / THRESHOLD_FILE).read_text())
    assert own["model"]["kind"] == "bundle" and own["image"]["value"] > good[-1]
    assert own["image"]["achieved"]["false_positives"] == 0
    code = runtime_main(["predict", str(bundle), str(test), "--output", str(tmp_path / "rt"),
                         "--quiet", "--no-maps"])  # fmt: skip
    assert code == 0
    runtime_rows = _rows(tmp_path / "rt/scores.csv")
    assert {r["threshold_source"] for r in runtime_rows} == {
        "calibrated: fpr 0.001 on 3 good images"
    }
    assert all(r["anomalous"] == "0" for r in runtime_rows if "/good/" in r["path"])


def test_a_threshold_of_another_model_is_refused(run, data, tmp_path):  # noqa: F811
    """The run's threshold.json copied beside its bundle, or kept after the category was
    fitted again, names both identities in one paragraph and the fix; exit 1."""
    good = data / "plate/test/good"
    assert run_ad("calibrate", "--run", str(run), "--category", "plate", "--normal", str(good),
                  "--no-progress").returncode == 0  # fmt: skip
    bundle = tmp_path / "bundle"
    assert _export(run, bundle).returncode == 0
    shutil.copy(run / "plate" / THRESHOLD_FILE, bundle / THRESHOLD_FILE)
    result = run_ad("predict", "--model", str(bundle), "--input", str(good), "--out",
                    str(tmp_path / "p"))  # fmt: skip
    assert result.returncode == 1 and "calibrated on another model" in result.stderr
    assert "graph_sha256" in result.stderr and "ad calibrate" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1
    code = runtime_main(["predict", str(bundle), str(good), "--output", str(tmp_path / "q")])
    assert code == 1
    # the category fitted again (another model.pt): its old threshold no longer holds
    import torch

    fitted = run / "plate/model.pt"
    state = torch.load(fitted, weights_only=True)
    name = next(k for k, v in state.items() if isinstance(v, torch.Tensor))
    torch.save({**state, name: state[name] + 1}, fitted)
    result = run_ad("predict", "--run", str(run), "--category", "plate", "--input", str(good),
                    "--out", str(tmp_path / "r"))  # fmt: skip
    assert result.returncode == 1 and "calibrated on another model" in result.stderr
    (bundle / THRESHOLD_FILE).write_text("{not json")
    result = run_ad("predict", "--model", str(bundle), "--input", str(good), "--out",
                    str(tmp_path / "s"))  # fmt: skip
    assert result.returncode == 1 and "not a readable threshold file" in result.stderr
    # an unreadable good image stops the calibration, named, before anything is written
    mixed = tmp_path / "mixed"
    shutil.copytree(good, mixed)
    (mixed / "broken.png").write_bytes(b"not an image")
    (bundle / THRESHOLD_FILE).unlink()
    result = run_ad("calibrate", "--model", str(bundle), "--normal", str(mixed), "--no-progress")
    assert result.returncode == 1 and "broken.png" in result.stderr
    assert "calibrate again" in result.stderr and not (bundle / THRESHOLD_FILE).exists()


def test_runtime_calibrates_and_watches_without_torch(
    gaussian_run,  # noqa: F811
    data,  # noqa: F811
    tmp_path,
    runtime_command,
):
    """``ad-runtime calibrate`` and ``ad-runtime predict --watch`` in the venv without torch
    (:func:`adtest.install_runtime`): threshold.json written into the bundle, then the
    watch's rows decided by it."""
    from adtest import run_runtime

    bundle = tmp_path / "bundle"
    assert _export(gaussian_run, bundle).returncode == 0
    good = data / "plate/test/good"
    result = run_runtime(runtime_command, "calibrate", str(bundle), "--normal", str(good),
                         "--fpr", "0.01", "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    assert printed == json.loads((bundle / THRESHOLD_FILE).read_text())
    assert printed["image"]["source"] == "calibrated: fpr 0.01 on 3 good images"
    out = tmp_path / "out"
    test = str(data / "plate/test")
    result = run_runtime(runtime_command, "predict", str(bundle), "--watch", test,
                         "--output", str(out), "--watch-timeout", "1", "--quiet")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "6 images scored, 0 unreadable" in result.stdout
    rows = _rows(out / "scores.csv")
    assert {r["threshold_source"] for r in rows} == {printed["image"]["source"]}
    assert all(float(r["threshold"]) == printed["image"]["value"] for r in rows)

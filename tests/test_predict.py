"""`ad predict`: a saved fitted method scores new images exactly as in its run."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adcore.infra.errors import DataError, UsageError
from adcore.run.predict import predict
from adtest import eval_args, fast_flags, run_ad, write_mvtec_tree


def _eval(data: Path, out: Path, *extra: str) -> Path:
    result = run_ad(
        *eval_args(str(data), str(out), "3"),
        *fast_flags(),
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return out / "mvtec/pixel-gaussian/default"


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("predict")
    data = write_mvtec_tree(root / "mvtec", num_good=4, num_bad=3)
    run = _eval(
        data,
        root / "out",
        "--save-model",
        "--save-maps",
        "--set",
        "visualization.save_overlay=true",
    )
    return data, run


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as stream:
        return list(csv.DictReader(stream))


def test_predict_reproduces_the_run_scores_through_the_cli(saved_run, tmp_path):
    from sklearn.metrics import f1_score

    data, run = saved_run
    out = tmp_path / "pred"
    result = run_ad(
        "predict", "--run", str(run), "--category", "plate", "--input",
        str(data / "plate/test"), "--out", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Random weights" not in result.stdout  # a weight-free method
    expected = {Path(r["path"]).resolve(): r for r in _rows(run / "plate/scores.csv")}
    got = _rows(out / "scores.csv")
    assert len(got) == len(expected) == 7
    scores = np.array([float(expected[Path(r["path"]).resolve()]["score"]) for r in got])
    np.testing.assert_allclose([float(r["score"]) for r in got], scores, rtol=1e-5, atol=1e-5)

    # the threshold: the F1-best cut of the run's own test scores, found by a sweep
    labels = np.array([int(expected[Path(r["path"]).resolve()]["label"]) for r in got])
    sweep = {t: f1_score(labels, scores >= t) for t in np.unique(scores)}
    best = max(sweep.values())
    threshold = float(got[0]["threshold"])
    assert sweep[threshold] == best
    assert threshold == min(t for t, f in sweep.items() if f == best)
    assert [int(r["anomalous"]) for r in got] == [int(s >= threshold) for s in scores]

    for row in got:
        saved = run / "plate/maps" / row["map"].removeprefix("maps/")
        with Image.open(out / row["map"]) as ours, Image.open(saved) as theirs:
            assert ours.mode == "F" and ours.size == (32, 32)
            np.testing.assert_allclose(np.asarray(ours), np.asarray(theirs), rtol=1e-5, atol=1e-5)
    overlays = sorted((out / "overlays").glob("*.png"))
    assert len(overlays) == 7
    assert sum("_anomalous_" in p.name for p in overlays) == int(np.sum(scores >= threshold))


def test_given_threshold_and_single_images(saved_run, tmp_path):
    data, run = saved_run
    image = data / "widget/test/square/001.png"
    output = predict(
        run, [image, data / "widget/test/good"], tmp_path / "p", threshold=1e9, category="widget"
    )
    assert output.threshold == 1e9 and output.threshold_source == "given"
    assert not any(i.anomalous for i in output.images)
    assert [i.key for i in output.images] == ["001", "000", "001-2", "002", "003"]
    assert len(list((tmp_path / "p/maps").glob("*.tiff"))) == 5


def test_a_run_with_several_categories_needs_category(saved_run, tmp_path):
    data, run = saved_run
    with pytest.raises(UsageError, match=r"2 categories \(plate, widget\)\. Choose one with"):
        predict(run, [data / "plate/test"], tmp_path / "p")


def test_a_run_without_saved_model_is_a_clear_error(tmp_path):
    from adcore.config.files import build_raw_config
    from adcore.config.problems import validate_base
    from adcore.config.resolve import resolve
    from adcore.plugins.registry import get_registry
    from adcore.run.runner import Evaluation, RunOptions

    data = write_mvtec_tree(tmp_path / "mvtec", categories=("plate",))
    raw = build_raw_config(
        None,
        assignments=[
            "model.name=pixel-gaussian",
            "model.resolution=16",
            "data.dataset=mvtec",
            f"data.root={data}",
            "data.k_shot=2",
            "data.num_workers=0",
            f"experiment.output_root={tmp_path / 'out'}",
            "evaluation.latency.enabled=false",
        ],
    )
    config = resolve(validate_base(raw), get_registry())
    run = Evaluation(config, get_registry(), RunOptions(show_progress=False)).run().run_dir
    with pytest.raises(DataError, match="--save-model"):
        predict(run, [data / "plate/test"], tmp_path / "p")


def test_missing_input_is_a_clear_error(saved_run, tmp_path):
    _, run = saved_run
    with pytest.raises(DataError, match=r"nothing\.png does not exist"):
        predict(run, [tmp_path / "nothing.png"], tmp_path / "p", category="plate")


def test_predict_reports_a_normalised_score_beside_the_raw_one(saved_run, tmp_path):
    """Hand formula: 0 at the run's lowest test score, 0.5 at the threshold, 1 at its highest,
    linear between; the threshold is recomputed here by brute force over the test scores."""
    import json

    data, run = saved_run
    args = ["predict", "--run", str(run), "--category", "plate", "--out", str(tmp_path / "p")]
    result = run_ad(*args, "--input", str(data / "plate/test"), "--json")
    assert result.returncode == 0, result.stderr
    images = json.loads(result.stdout)["images"]
    run_rows = _rows(run / "plate/scores.csv")
    scores = np.array([float(r["score"]) for r in run_rows])
    labels = np.array([int(r["label"]) for r in run_rows])

    def f1(t: float) -> float:
        predicted = scores >= t
        tp = np.sum(predicted & (labels == 1))
        return 2 * tp / (predicted.sum() + labels.sum())

    threshold = max(sorted(set(scores)), key=lambda t: (f1(t), -t))
    low, high = scores.min(), scores.max()
    for image in images:
        s = image["score"]
        expected = (
            0.5 * (s - low) / (threshold - low)
            if s < threshold
            else 0.5 + 0.5 * (s - threshold) / (high - threshold)
        )
        assert image["normalised_score"] == pytest.approx(np.clip(expected, 0, 1), abs=1e-6)
        assert (image["normalised_score"] >= 0.5) == image["anomalous"]
    values = sorted(image["normalised_score"] for image in images)
    assert values[0] == pytest.approx(0, abs=1e-6) and values[-1] == pytest.approx(1, abs=1e-6)
    assert 0.5 in [round(v, 9) for v in values]  # the image at the threshold
    table = run_ad(*args, "--input", str(data / "plate/test"))
    assert "normalised" in table.stdout and "0.5 at the threshold" in table.stdout
    assert "normalised_score" in (tmp_path / "p/scores.csv").read_text().splitlines()[0]


def test_unreadable_inputs_are_named_at_once_before_any_map(saved_run, tmp_path):
    data, run = saved_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = (data / "widget/test/good/000.png").read_bytes()
    (inputs / "ok.png").write_bytes(good)
    (inputs / "cut.png").write_bytes(good[: len(good) // 3])  # truncated
    (inputs / "text.png").write_text("not an image")
    with pytest.raises(DataError) as caught:
        predict(run, [inputs], tmp_path / "p", category="widget")
    text = str(caught.value)
    assert "2 bad sample(s)" in text and "cut.png" in text and "text.png" in text
    assert "--skip-bad-samples" not in text and "run ad predict again" in text
    assert not (tmp_path / "p" / "maps").exists()


def test_predict_says_when_the_run_used_random_weights(tmp_path):
    """A PatchCore run made with --random-weights: ad predict says its verdicts are not the
    method's, in the table's notes and in --json."""
    import json

    from adcore.plugins.registry import get_registry

    smoke = get_registry().resolve("method", "patchcore").spec.smoke_config
    overrides = [arg for key, value in smoke.items() for arg in ("--set", f"model.{key}={value}")]
    env = {"AD_CACHE_DIR": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1"}
    data = write_mvtec_tree(tmp_path / "mvtec", num_good=3, num_bad=2)
    evaluated = run_ad(
        *eval_args(str(data), str(tmp_path / "out"), "2"), *fast_flags(), "--method",
        "patchcore", "--category", "plate", "--random-weights", "--save-model", *overrides,
        env=env,
    )  # fmt: skip
    assert evaluated.returncode == 0, evaluated.stderr
    run = tmp_path / "out/mvtec/patchcore/default"
    args = ["predict", "--run", str(run), "--input", str(data / "plate/test/good")]
    shown = run_ad(*args, "--out", str(tmp_path / "p1"), env=env)
    assert shown.returncode == 0, shown.stderr
    assert "Random weights: the run's models were randomly initialised" in shown.stdout
    as_json = run_ad(*args, "--out", str(tmp_path / "p2"), "--json", env=env)
    assert json.loads(as_json.stdout)["random_weights"] is True


def test_a_threshold_below_every_test_score_is_warned_about(saved_run, tmp_path):
    data, run = saved_run
    result = run_ad(
        "predict", "--run", str(run), "--category", "widget", "--input",
        str(data / "widget/test/good"), "--out", str(tmp_path / "p"), "--threshold", "-1e9",
        "--no-overlays",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    printed = " ".join(result.stdout.split())
    assert "threshold is at or below every test score of the run" in printed
    assert "ad calibrate --normal DIR" in printed
